import pytest
import torch

from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline


@pytest.fixture(scope="module")
def pixart():
    """A tiny PixArt-α pipeline and a function generating its images with a fixed seed."""
    pipe = tiny_pipeline("pixart-alpha", seed=0)
    kwargs = tiny_call_kwargs("pixart-alpha")

    def generate(**overrides):
        call = dict(kwargs, **overrides)
        return pipe(**call, generator=torch.Generator().manual_seed(0)).images

    return pipe, generate, kwargs


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()

import json
import os

import numpy as np
import pytest
from eval_helpers import TINY_CALL

from diffusion_accel.eval.generate import (
    generate_images,
    item_seed,
    load_arrays,
    make_batches,
    make_items,
    read_manifest,
)
from diffusion_accel.eval.prompts import load_prompts


class CountingPipe:
    """Delegates to a pipeline and counts its calls and prompts."""

    def __init__(self, pipe):
        self.pipe, self.calls, self.prompts = pipe, 0, []

    def __call__(self, **kwargs):
        self.calls += 1
        self.prompts.append(list(kwargs["prompt"]))
        return self.pipe(**kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


@pytest.fixture(scope="module")
def pipe():
    from diffusion_accel.testing import tiny_pipeline

    return tiny_pipeline("pixart-alpha", seed=0)


def test_items_have_a_fixed_seed_per_prompt_index_and_image_index():
    prompts = load_prompts(["a", "b", "c"])
    items = make_items(prompts, num_images=2, seed=7)
    assert [it.key for it in items[:3]] == ["p00000-i00", "p00000-i01", "p00001-i00"]
    assert items[3].seed == item_seed(7, 1, 1) != item_seed(7, 1, 0) != item_seed(8, 1, 1)
    subset = make_items([prompts[1]], num_images=2, seed=7)
    assert subset == items[2:4]
    assert [len(b) for b in make_batches(items, 4)] == [4, 2]


def test_generation_writes_images_and_a_manifest(pipe, tmp_path):
    items = make_items(load_prompts(["a red cat", "a dog"]), num_images=2, seed=0)
    manifest = generate_images(pipe, items, tmp_path, batch_size=3, call_kwargs=TINY_CALL, progress=False)
    assert sorted(manifest) == [it.key for it in items]
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [it.key for it in items]
    assert not [n for n in os.listdir(tmp_path) if n.startswith("manifest.part-")]
    arrays = load_arrays(tmp_path, [it.key for it in items])
    assert arrays.shape == (4, 32, 32, 3) and arrays.dtype == np.uint8
    assert manifest["p00001-i01"]["seed"] == item_seed(0, 1, 1)


def test_same_item_same_pixels_in_any_run_with_the_same_batches(pipe, tmp_path):
    prompts = load_prompts(["a red cat", "a dog", "a tree"])
    full = make_items(prompts, seed=0)
    generate_images(pipe, full, tmp_path / "full", batch_size=1, call_kwargs=TINY_CALL, progress=False)
    subset = make_items([prompts[1]], seed=0)
    generate_images(pipe, subset, tmp_path / "subset", batch_size=1, call_kwargs=TINY_CALL, progress=False)
    key = subset[0].key
    assert (tmp_path / "full" / "images" / f"{key}.png").read_bytes() == \
        (tmp_path / "subset" / "images" / f"{key}.png").read_bytes()


def test_rerun_skips_finished_batches_and_redoes_a_partial_one_whole(pipe, tmp_path):
    items = make_items(load_prompts(["a", "b", "c", "d"]), seed=0)
    first = CountingPipe(pipe)
    generate_images(first, items, tmp_path, batch_size=2, call_kwargs=TINY_CALL, progress=False)
    assert first.calls == 2
    before = {n: (tmp_path / "images" / n).read_bytes() for n in os.listdir(tmp_path / "images")}

    again = CountingPipe(pipe)
    generate_images(again, items, tmp_path, batch_size=2, call_kwargs=TINY_CALL, progress=False)
    assert again.calls == 0

    # Simulate a run killed inside the second batch: its last record is gone and a half line is left.
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    os.unlink(tmp_path / "images" / f"{items[3].key}.png")
    assert sorted(read_manifest(tmp_path)) == [it.key for it in items[:3]]
    resumed = CountingPipe(pipe)
    generate_images(resumed, items, tmp_path, batch_size=2, call_kwargs=TINY_CALL, progress=False)
    assert resumed.calls == 1 and resumed.prompts == [["c", "d"]]  # the whole batch, as first generated
    after = {n: (tmp_path / "images" / n).read_bytes() for n in os.listdir(tmp_path / "images")}
    assert after == before


def test_bad_arguments(pipe, tmp_path):
    items = make_items(load_prompts(["a"]))
    with pytest.raises(ValueError, match="must not set"):
        generate_images(pipe, items, tmp_path, call_kwargs={"prompt": "x"}, progress=False)
    with pytest.raises(ValueError, match="num_images"):
        make_items(load_prompts(["a"]), num_images=0)
    with pytest.raises(ValueError, match="lacks 1 item"):
        load_arrays(tmp_path, ["p00000-i00"])

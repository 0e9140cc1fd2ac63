"""VMoBA's block partitions of a ``(frames, height, width)`` token grid, as padded token slots.

VMoBA (Wu et al. 2025) cuts the video tokens of an attention layer into blocks by one of three
partitions, cycled layer by layer (layer ``i`` uses ``partitions[i % len(partitions)]``):

* ``"1d"`` (temporal): blocks of ``block_frames`` whole frames, ``(t, H, W)``;
* ``"2d"`` (spatial): blocks of ``block_spatial = (h, w)`` tiles through every frame, ``(F, h, w)``;
* ``"3d"`` (spatio-temporal): cubes of ``block_cube = (t, h, w)`` tokens.

Edge blocks are smaller when a grid side is not a multiple of the block side. A
:class:`BlockLayout` lists the tokens of each block in a slot of ``slot`` positions (the largest
block's size): ``index (n_blocks, slot)`` holds token positions, ``valid`` marks real ones
(padding points at token 0 and is masked out). Tokens outside the video span (the text of joint
attention) become extra blocks flagged ``dense``: computed as queries and as keys, outside the
selection budget. When no slot is padded the layout is a plain permutation of the sequence into
equal blocks (:attr:`BlockLayout.uniform`).

Example:
    >>> from diffusion_accel.sparse_attn.vmoba_blocks import block_ids, partition_layout
    >>> block_ids((2, 2, 2), "1d", (1, (1, 1), (1, 1, 1))).tolist()    # one block per frame
    [0, 0, 0, 0, 1, 1, 1, 1]
    >>> block_ids((2, 2, 2), "2d", (1, (1, 1), (1, 1, 1))).tolist()    # one per pixel, through time
    [0, 1, 2, 3, 0, 1, 2, 3]
    >>> layout = partition_layout((2, 3, 3), "3d", (1, (2, 2), (2, 2, 2)))
    >>> layout.index.shape, layout.sizes.tolist()
    (torch.Size([4, 8]), [8, 4, 4, 2])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PARTITION_KINDS", "BlockLayout", "block_ids", "block_shape", "partition_layout"]

#: partition name -> what it cuts along
PARTITION_KINDS = {"1d": "frames (temporal)", "2d": "height x width (spatial)", "3d": "frames x height x width (cube)"}


def block_shape(grid: tuple[int, int, int], kind: str, sizes) -> tuple[int, int, int]:
    """Block extent ``(t, h, w)`` in tokens of partition ``kind`` on ``grid`` (clipped to the grid).

    ``sizes = (block_frames, (h, w) of 2d, (t, h, w) of 3d)``, as in ``SparseAttentionConfig``.
    """
    frames, spatial, cube = sizes
    f, h, w = grid
    if kind == "1d":
        if f == 1:
            raise ValueError(
                f"VMoBA's 1d (temporal) partition needs video tokens (frames > 1), but the token grid is "
                f"{grid}: an image has one frame, so a 1d block would hold every token. Use "
                "partitions=('2d',) or ('2d', '3d') for image models, or method='block_sparse'."
            )
        shape = (frames, h, w)
    elif kind == "2d":
        shape = (f, *spatial)
    elif kind == "3d":
        shape = tuple(cube)
    else:
        raise ValueError(f"Unknown VMoBA partition {kind!r}; choose from {sorted(PARTITION_KINDS)}.")
    return tuple(min(s, g) for s, g in zip(shape, grid))


def block_ids(grid: tuple[int, int, int], kind: str, sizes) -> torch.Tensor:
    """Block index of every grid token (frame-major order, as the models flatten them): ``(F*H*W,)``."""
    bt, bh, bw = block_shape(grid, kind, sizes)
    f, h, w = grid
    nh, nw = math.ceil(h / bh), math.ceil(w / bw)
    t_id = torch.arange(f) // bt
    h_id = torch.arange(h) // bh
    w_id = torch.arange(w) // bw
    return (t_id[:, None, None] * (nh * nw) + h_id[None, :, None] * nw + w_id[None, None, :]).reshape(-1)


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of one attention call as padded token slots (see the module docstring).

    ``index`` long ``(n, slot)``: token positions; ``valid`` bool ``(n, slot)``; ``dense`` bool
    ``(n,)``: blocks of tokens outside the video span (always computed); ``sizes`` ``(n,)``: real
    tokens per block; ``seq``: sequence length.
    """

    index: torch.Tensor
    valid: torch.Tensor
    dense: torch.Tensor
    sizes: torch.Tensor
    seq: int

    @property
    def slot(self) -> int:
        return self.index.shape[1]

    @property
    def uniform(self) -> bool:
        """True when every slot is full: the layout is a permutation into equal blocks."""
        return bool(self.valid.all())

    def token_blocks(self) -> torch.Tensor:
        """Block index of every token of the sequence ``(seq,)``."""
        out = torch.empty(self.seq, dtype=torch.long, device=self.index.device)
        rows = torch.arange(self.index.shape[0], device=self.index.device)[:, None].expand_as(self.index)
        out[self.index[self.valid]] = rows[self.valid]
        return out

    def to(self, device) -> BlockLayout:
        return BlockLayout(self.index.to(device), self.valid.to(device), self.dense.to(device),
                           self.sizes.to(device), self.seq)


def _slots(groups: list[torch.Tensor], slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.zeros(len(groups), slot, dtype=torch.long)
    valid = torch.zeros(len(groups), slot, dtype=torch.bool)
    for i, tokens in enumerate(groups):
        index[i, : tokens.numel()] = tokens
        valid[i, : tokens.numel()] = True
    return index, valid


def partition_layout(grid, kind: str, sizes, *, seq: int | None = None, span=None) -> BlockLayout:
    """The :class:`BlockLayout` of partition ``kind`` for the video tokens ``span`` of a sequence.

    ``span = (start, stop)`` holds the ``F*H*W`` video tokens (default: the whole sequence); the
    other tokens are cut into dense blocks of at most ``slot`` tokens, in order.
    """
    n_video = math.prod(grid)
    seq = n_video if seq is None else seq
    start, stop = (0, seq) if span is None else span
    if stop - start != n_video:
        raise ValueError(f"The token grid {grid} holds {n_video} tokens but the video span {span} has "
                         f"{stop - start}; the model adapter's token_grid does not match this call.")
    ids = block_ids(grid, kind, sizes)
    order = torch.argsort(ids, stable=True)  # tokens of block 0, then block 1, ... (grid order inside)
    counts = torch.bincount(ids)
    slot = int(counts.max())
    video = list((order + start).split(counts.tolist()))
    others = torch.cat([torch.arange(0, start), torch.arange(stop, seq)])
    dense = list(others.split(slot)) if others.numel() else []
    index, valid = _slots(video + dense, slot)
    flags = torch.tensor([False] * len(video) + [True] * len(dense))
    return BlockLayout(index, valid, flags, valid.sum(-1), seq)

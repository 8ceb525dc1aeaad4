"""The tiled transpose against a plain one, on shapes that are not multiples of the tile."""
from __future__ import annotations

import pytest
import torch

from hf_mudsc import tiles


@pytest.mark.parametrize("shape", [(5, 3), (64, 64), (70, 129), (130, 31)])
def test_transposed_equals_the_plain_transpose(monkeypatch, shape):
    monkeypatch.setattr(tiles, "TILE", 32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, generator=g)
    add = torch.randn(shape[1], shape[0], dtype=torch.float64, generator=g)
    assert torch.equal(tiles.transposed(torch.empty(shape[1], shape[0], dtype=torch.float64), x), x.T)
    assert torch.equal(tiles.transposed(torch.empty(shape[1], shape[0], dtype=torch.float64), x, add=add), add + x.T)
    # into a strided view of a larger matrix, as the similarity writes its mirrored blocks
    big = torch.zeros(shape[1] + 3, shape[0] + 2, dtype=torch.float64)
    tiles.transposed(big[3:, 2:], x)
    assert torch.equal(big[3:, 2:], x.T) and not big[:3].any() and not big[:, :2].any()

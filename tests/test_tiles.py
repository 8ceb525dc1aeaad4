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


@pytest.mark.parametrize("side", [5, 64, 70, 129])
def test_symmetrise_in_place_equals_the_mean_with_the_transpose(monkeypatch, side):
    """Bit for bit, also on a strided view of a larger matrix (a diagonal block of the similarity)."""
    monkeypatch.setattr(tiles, "TILE", 32)
    x = torch.randn(side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    big = torch.zeros(side + 5, side + 4, dtype=torch.float64)
    big[2:2 + side, 3:3 + side] = x
    tiles.symmetrise_(big[2:2 + side, 3:3 + side])
    assert torch.equal(big[2:2 + side, 3:3 + side], (x + x.T) / 2)
    big[2:2 + side, 3:3 + side] = 0
    assert not big.any()  # nothing outside the view was written

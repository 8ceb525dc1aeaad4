"""The correlations a merger keeps: a symmetric matrix as its upper blocks, read exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_mudsc.similarity import blend
from hf_mudsc.statistics import Moments, SymmetricBlocks

EDGES = [0, 3, 7, 8, 12]  # uneven blocks, one of a single unit


def random_symmetric(d: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((d, d)).astype(np.float32)
    return np.triu(a) + np.triu(a, 1).T


def packed(full: np.ndarray, edges: list[int]) -> SymmetricBlocks:
    n = len(edges) - 1
    return SymmetricBlocks({(p, q): full[edges[p]:edges[p + 1], edges[q]:edges[q + 1]].copy()
                            for p in range(n) for q in range(p, n)}, edges)


def test_every_read_returns_the_whole_matrix_values():
    full = random_symmetric(12)
    m = packed(full, EDGES)
    assert m.shape == (12, 12) and len(m) == 12 and m.dtype == np.float32
    assert m.nbytes == 4 * sum((b - a) * (12 - a) for a, b in zip(EDGES[:-1], EDGES[1:]))
    for start in range(13):
        for stop in range(start, 14):
            assert np.array_equal(m[start:stop], full[start:stop]), (start, stop)
    assert np.array_equal(m[-5:], full[-5:])
    rows, cols = np.random.default_rng(1).integers(0, 12, size=(2, 5, 40))
    assert np.array_equal(m[rows, cols], full[rows, cols])  # any shape, both triangles, diagonal
    assert np.array_equal(m[np.array([], dtype=int), np.array([], dtype=int)], np.zeros(0, np.float32))
    assert np.array_equal(m.diagonal(), np.diagonal(full))
    assert np.array_equal(np.asarray(m), full)
    as64 = np.asarray(m, dtype=np.float64)
    assert as64.dtype == np.float64 and np.array_equal(as64, full.astype(np.float64))


def test_blend_reads_kept_correlations_as_the_whole_matrix():
    act = random_symmetric(12, seed=2)
    weight = random_symmetric(12, seed=3).astype(np.float64)
    kept = packed(act, EDGES)
    assert np.array_equal(blend(0.3, weight.copy(), kept), blend(0.3, weight.copy(), act))
    assert blend(0.0, None, kept) is kept


def test_moments_correlation_keeps_the_values_of_corr(monkeypatch):
    """Upper blocks of Moments.corr, the same bits, a constant unit's row and diagonal 0; about half
    the memory once there are several blocks."""
    import hf_mudsc.statistics.moments as moments

    monkeypatch.setattr(moments, "BLOCK", 4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(60, 10, generator=g) * 3 + 1
    x[:, 6] = 2.5  # a constant unit
    m = Moments(10).update(x[:25]).update(x[25:])
    for dtype in (torch.float32, torch.float64):
        kept = m.correlation(dtype)
        assert kept.edges == [0, 4, 8, 10]
        assert np.array_equal(np.asarray(kept), m.corr(dtype).numpy())
    whole = m.corr(torch.float32).numpy()
    assert whole[6, 6] == 0 and not whole[6].any()
    assert m.correlation().nbytes == 4 * (16 + 16 + 8 + 16 + 8 + 4)  # float32, 68 of the 100 entries


@pytest.mark.parametrize("edges, blocks, message", [
    ([1, 3], {(0, 0): np.zeros((2, 2))}, "edges must rise from 0"),
    ([0, 2, 2], {}, "edges must rise from 0"),
    ([0, 2, 4], {(0, 0): np.zeros((2, 2)), (1, 1): np.zeros((2, 2))}, "upper-triangular blocks"),
    ([0, 2], {(0, 0): np.zeros((2, 3))}, "has shape"),
])
def test_malformed_blocks_are_refused(edges, blocks, message):
    with pytest.raises(ValueError, match=message):
        SymmetricBlocks(blocks, edges)


def test_unsupported_reads_say_what_to_use():
    m = packed(random_symmetric(12), EDGES)
    with pytest.raises(IndexError, match="no step"):
        m[::2]
    with pytest.raises(IndexError, match="row slice"):
        m[3]
    with pytest.raises(IndexError, match="out of range"):
        m[np.array([0, 12]), np.array([1, 1])]
    with pytest.raises(ValueError, match="without a copy"):
        np.asarray(m, copy=False)


def test_copy_to_writes_the_whole_matrix_into_a_given_one():
    whole = np.random.default_rng(3).standard_normal((9, 9)).astype(np.float32)
    whole = whole + whole.T
    m = SymmetricBlocks({(p, q): whole[e[p]:e[p + 1], e[q]:e[q + 1]].copy() for p in range(3) for q in range(p, 3)
                         for e in [[0, 2, 7, 9]]}, [0, 2, 7, 9])
    out = np.full((9, 9), np.nan)
    assert m.copy_to(out) is out and np.array_equal(out, whole.astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        m.copy_to(np.empty((9, 8)))

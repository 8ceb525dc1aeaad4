"""The correlations a merger keeps: a symmetric matrix as its upper blocks, read exactly."""
from __future__ import annotations

import gc
import warnings

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


def test_on_disk_the_blocks_read_the_same_and_leave_the_process(monkeypatch):
    """to_disk moves the blocks into a file read through a read-only map (the in-memory blocks are
    freed), release maps them anew; every read gives the same values; a file that cannot be written
    leaves them in memory."""
    import weakref

    full = random_symmetric(12, seed=4)
    m = packed(full, EDGES)
    first = weakref.ref(m._blocks[0, 0])
    assert m.to_disk() and first() is None  # the memory the blocks held is given back
    for _ in range(2):
        assert all(isinstance(b, np.memmap) for b in m._blocks.values())
        assert np.array_equal(np.asarray(m), full) and np.array_equal(m[2:9], full[2:9])
        assert np.array_equal(m[[0, 11, 5], [11, 0, 5]], full[[0, 11, 5], [11, 0, 5]])
        with pytest.raises(ValueError, match="read-only"):
            m._blocks[0, 1][0, 0] = 1.0
        m.release()
    assert m.to_disk()  # once on disk, again is nothing
    import copy
    import pickle

    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):  # a merger copied by a user's experiment
        assert other._file is not None and other._file is not m._file and np.array_equal(np.asarray(other), full)

    with warnings.catch_warnings():  # the file is closed with its blocks (was an unclosed-file warning)
        warnings.simplefilter("error", ResourceWarning)
        other = packed(full, EDGES)
        other.to_disk()
        del other
        gc.collect()

    class FullDisk:
        def __init__(self, **_):
            self.closed = False

        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            self.closed = True

    monkeypatch.setattr("tempfile.TemporaryFile", FullDisk)
    kept = packed(full, EDGES)
    assert not kept.to_disk()
    assert not any(isinstance(b, np.memmap) for b in kept._blocks.values())
    kept.release()
    assert np.array_equal(np.asarray(kept), full)


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

"""The result type shared by every solver, its objective, and input checks.

Conventions: a similarity matrix is square over the concatenation of all models' units
(model ``i`` owns rows/cols ``offsets[i]:offsets[i] + sizes[i]``); higher is more similar.
A solution assigns every unit of every model to one of ``k`` merged units.

Solvers decide on :func:`tie_key` of the similarities (rounded to :data:`TIE_DECIMALS`
decimals), never on their last bits: two numpy builds that compute one correlation
differently in the 16th digit give the same solution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..tiles import transposed

TIE_DECIMALS = 9


@dataclass(frozen=True, eq=False)
class Solution:
    """``assign[i][j]``: merged unit (in ``[0, k)``) of unit ``j`` of model ``i``.

    Every merged unit has at least one member; merged units are numbered by the smallest
    global index of their members (by ``solve_heads``: head by head, and so inside each
    head). ``objective`` is :func:`pair_objective` of the original similarity matrix.
    ``over_budget``: the models whose same-model merges exceed their budget (only a zip whose
    ``k`` leaves no way to respect every budget). Compared by identity (it holds arrays).
    """

    assign: list[np.ndarray]
    k: int
    objective: float
    over_budget: tuple[int, ...] = ()

    def labels(self) -> np.ndarray:
        """Merged unit of every unit, in global (concatenated) order."""
        return np.concatenate(self.assign)


def pair_objective(sim: Any, labels: np.ndarray) -> float:
    """Mean similarity of the matched pairs: the mean of ``sim[u, v]`` over all *ordered*
    pairs ``u != v`` of units (of any models) with ``labels[u] == labels[v]``, read from the
    original ``sim`` (so an asymmetric ``sim`` counts as ``(sim + sim.T) / 2``).
    0.0 when no merged unit has two members.
    """
    return MergedPairs(labels).objective(as_matrix(sim))


class MergedPairs:
    """The ordered pairs of units inside each merged unit (self-pairs included, for the layout),
    as index arrays ``rows`` and ``cols``: :meth:`mean` of a matrix's values at them is
    :func:`pair_objective`, so that a matrix known only by its entries can be scored."""

    def __init__(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels)
        starts = np.cumsum(counts) - counts
        self.sizes: list[int] = [int(c) for c in np.unique(counts[counts > 1])]
        blocks = [order[starts[counts == c][:, None] + np.arange(c)] for c in self.sizes]
        self.clusters = [len(m) for m in blocks]
        rows = [np.broadcast_to(m[:, :, None], (len(m), c, c)).reshape(-1) for m, c in zip(blocks, self.sizes)]
        cols = [np.broadcast_to(m[:, None, :], (len(m), c, c)).reshape(-1) for m, c in zip(blocks, self.sizes)]
        self.rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self.cols = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)

    def objective(self, sim: Any) -> float:
        """:func:`pair_objective` of ``sim`` from its entries at the pairs (in float64): ``sim`` is
        anything read by index arrays, a matrix or a merger's kept correlations (never made whole)."""
        return self.mean(np.asarray(sim[self.rows, self.cols], dtype=np.float64))

    def mean(self, values: np.ndarray) -> float:
        """Mean of ``values`` (at ``rows, cols``) over the pairs of distinct units; 0.0 when no
        merged unit has two members."""
        total, pairs, start = 0.0, 0, 0
        for c, n in zip(self.sizes, self.clusters):
            blocks = values[start:start + n * c * c].reshape(n, c, c)
            start += n * c * c
            total += float(blocks.sum() - np.trace(blocks, axis1=1, axis2=2).sum())
            pairs += n * c * (c - 1)
        return total / pairs if pairs else 0.0


def make_solution(sim: np.ndarray, labels: np.ndarray, sizes: Sequence[int],
                  over_budget: Sequence[int] = ()) -> Solution:
    """Split global ``labels`` (merged units ``0..k-1``, all used) per model, score them."""
    split = np.split(labels, np.cumsum(sizes)[:-1])
    return Solution([part.copy() for part in split], int(labels.max()) + 1,
                    MergedPairs(labels).objective(sim), tuple(int(m) for m in over_budget))


def tie_key(sim: np.ndarray, symmetrise: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """The similarities a solver compares: rounded to :data:`TIE_DECIMALS` decimals, so that
    exact and nearly exact ties (``corrcoef`` of identical rows) resolve by index order;
    ``symmetrise``: of ``(sim + sim.T) / 2``. Written into ``out`` (``sim``'s shape and dtype, not
    ``sim`` itself) when given, else a new array; computed in place and the transpose tile by tile
    (``np.round``'s multiply, round half to even, divide: the same bits with fewer passes over a
    large matrix)."""
    scale = 10.0 ** TIE_DECIMALS
    key = np.empty_like(sim) if out is None else out
    if symmetrise:
        view = torch.from_numpy(np.ascontiguousarray(sim))
        transposed(torch.from_numpy(key), view, add=view)
        key /= 2
        key *= scale
    else:
        np.multiply(sim, scale, out=key)  # the copy and the first step in one pass
    np.rint(key, out=key)
    key /= scale
    return key


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber merged units ``0..k-1`` by the smallest global index of their members."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def check_sizes(sizes: Sequence[int]) -> list[int]:
    """Positive integer widths, at least one model."""
    out = [int(s) for s in sizes]
    if not out or any(s < 1 or s != orig for s, orig in zip(out, sizes)):
        raise ValueError(f"sizes must be a non-empty list of positive integers, got {sizes!r}")
    return out


def as_matrix(sim: Any, sizes: Sequence[int] | None = None) -> np.ndarray:
    """``sim`` (numpy array or torch tensor) as a finite square float64 array, of side
    ``sum(sizes)`` when ``sizes`` is given."""
    if hasattr(sim, "detach"):
        sim = sim.detach().cpu().numpy()
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity matrix must be square, got shape {sim.shape}")
    if sizes is not None and sim.shape[0] != sum(sizes):
        raise ValueError(f"similarity matrix has side {sim.shape[0]} but sizes {list(sizes)} "
                         f"sum to {sum(sizes)}")
    if not np.isfinite(sim).all():
        raise ValueError("similarity matrix has NaN or infinite entries")
    return sim

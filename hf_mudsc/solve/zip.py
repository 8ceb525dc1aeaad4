"""Zip mode: greedy merging of the most similar clusters of units (ZipIt! / MuDSC).

The rule (see :func:`solve_zip`) is the textbook O(n^3) loop; this implementation keeps,
for every cluster, the best partner and its similarity, updates them with one vectorised
pass per merge and recomputes a row only when its cached partner disappeared or was
forbidden, which makes 2 x 3072 units a matter of seconds.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .solution import Solution, as_matrix, canonical_labels, check_sizes, make_solution

NEG = -np.inf


def solve_zip(sim: Any, sizes: Sequence[int], k: int | None = None, budget: float = 0.0,
              decay: float = 0.0) -> Solution:
    """Merge the units of all models into ``k`` merged units (default ``max(sizes)``).

    Start with every unit as its own cluster and repeatedly merge the allowed pair of
    clusters with the highest similarity (ties: lowest first index, then lowest second
    index) until ``k`` clusters remain. Similarity of two units: ``(sim + sim.T) / 2``.
    After merging A and B, the similarity of the new cluster to any C is
    ``decay * min(s(A, C), s(B, C))``; ``decay = 0`` means a merged cluster is never merged
    again. A merge of two clusters that both hold units of model m is a same-model merge
    of m; model m may make at most ``floor(budget * sizes[m])`` of them (so that
    ``sizes[m] - #merged units reached by m`` never exceeds it); pairs over a budget are
    not allowed.

    When no allowed pair is left before ``k`` is reached, the merging goes on with the
    same greedy rule in two fallback phases: first ignoring the decay (cluster similarity
    = the minimum over member pairs, decay 1), still within budgets; then also ignoring
    the budgets. So exactly ``k`` merged units always come out.
    """
    sizes = check_sizes(sizes)
    sim = as_matrix(sim, sizes)
    k = max(sizes) if k is None else int(k)
    if not 1 <= k <= sum(sizes):
        raise ValueError(f"k must be in [1, {sum(sizes)}], got {k}")
    if not (0.0 <= budget <= 1.0 and 0.0 <= decay <= 1.0):
        raise ValueError(f"budget and decay must be in [0, 1], got {budget} and {decay}")
    clusters = _Clusters(sizes, budget)
    if not _greedy(_initial(sim, clusters), clusters, decay, k):
        if not _greedy(_linkage(sim, clusters), clusters, 1.0, k):
            clusters.caps[:] = np.inf
            _greedy(_linkage(sim, clusters), clusters, 1.0, k)
    return make_solution(sim, canonical_labels(clusters.labels()), sizes)


class _Clusters:
    """Current clusters, indexed by their smallest member; same-model merge budgets."""

    def __init__(self, sizes: list[int], budget: float) -> None:
        n = sum(sizes)
        model = np.repeat(np.arange(len(sizes)), sizes)
        self.members: list[list[int]] = [[u] for u in range(n)]
        self.alive = np.ones(n, dtype=bool)
        self.has = np.zeros((n, len(sizes)), dtype=bool)
        self.has[np.arange(n), model] = True
        self.used = np.zeros(len(sizes), dtype=np.int64)
        self.caps = np.floor(budget * np.asarray(sizes, dtype=np.float64) + 1e-9)

    def count(self) -> int:
        return int(self.alive.sum())

    def merge(self, a: int, b: int) -> np.ndarray:
        """Merge cluster ``b`` into ``a`` (``a < b``); return the models whose budget this
        merge used up."""
        cost = self.has[a] & self.has[b]
        self.used += cost
        self.has[a] |= self.has[b]
        self.members[a] += self.members[b]
        self.alive[b] = False
        return np.flatnonzero(cost & (self.used >= self.caps))

    def forbid(self, work: np.ndarray, model: int) -> np.ndarray:
        """Forbid every pair of live clusters that both hold model ``model``; return them."""
        rows = np.flatnonzero(self.alive & self.has[:, model])
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # a block: much faster
            work[rows[0]:rows[-1] + 1, rows[0]:rows[-1] + 1] = NEG
        else:
            work[np.ix_(rows, rows)] = NEG
        return rows

    def forbid_exhausted(self, work: np.ndarray) -> None:
        for model in np.flatnonzero(self.used >= self.caps):
            self.forbid(work, model)

    def labels(self) -> np.ndarray:
        labels = np.empty(len(self.alive), dtype=np.int64)
        for rep in np.flatnonzero(self.alive):
            labels[self.members[rep]] = rep
        return labels


def _greedy(work: np.ndarray, clusters: _Clusters, decay: float, k: int) -> bool:
    """Merge the best allowed pair of ``work`` (cluster similarities, ``-inf`` = not
    allowed) until ``k`` clusters remain; False if stuck before. Updates ``work`` and
    ``clusters`` in place.

    Columns of clusters that can no longer merge (merged away, or merged with
    ``decay = 0``) are not written (strided writes dominate the cost): ``live`` masks
    them wherever a row is read.
    """
    live = clusters.alive.copy()
    best_idx = work.argmax(axis=1)
    best_val = work[np.arange(len(work)), best_idx]
    while clusters.count() > k:
        a = int(np.argmax(best_val))
        if best_val[a] == NEG:
            return False
        b = int(best_idx[a])
        live[b] = False
        if decay > 0:
            row = decay * np.minimum(work[a], work[b])
            row[~live] = NEG
            work[a], work[:, a] = row, row
        else:
            live[a] = False
            row = np.full(len(work), NEG)
        stale = (best_idx == a) | (best_idx == b)
        for model in clusters.merge(a, b):
            stale[clusters.forbid(work, model)] = True
        stale &= live
        stale[a] = live[a]
        best_val[a] = best_val[b] = NEG
        _improve(best_val, best_idx, row, a, ~stale)
        _recompute(work, live, best_val, best_idx, np.flatnonzero(stale))
    return True


def _improve(best_val: np.ndarray, best_idx: np.ndarray, column: np.ndarray, col: int,
             rows: np.ndarray) -> None:
    """Take column ``col`` (values ``column``) as the best of ``rows`` where it beats the
    cached best (ties: the lower index)."""
    better = rows & ((column > best_val)
                     | ((column == best_val) & (col < best_idx) & (column > NEG)))
    best_val[better] = column[better]
    best_idx[better] = col


def _recompute(work: np.ndarray, live: np.ndarray, best_val: np.ndarray,
               best_idx: np.ndarray, rows: np.ndarray) -> None:
    """Best live partner of each of ``rows``."""
    vals = np.where(live, work[rows], NEG)
    idx = vals.argmax(axis=1)
    best_idx[rows] = idx
    best_val[rows] = vals[np.arange(len(rows)), idx]


def _initial(sim: np.ndarray, clusters: _Clusters) -> np.ndarray:
    """Similarity of singleton clusters: ``(sim + sim.T) / 2``, self-pairs and pairs over
    an exhausted budget ``-inf``."""
    work = np.add(sim, sim.T, out=np.empty_like(sim))
    work *= 0.5
    np.fill_diagonal(work, NEG)
    clusters.forbid_exhausted(work)
    return work


def _linkage(sim: np.ndarray, clusters: _Clusters) -> np.ndarray:
    """Similarity of the current clusters ignoring decay: the minimum of
    ``(sim + sim.T) / 2`` over their member pairs; pairs over an exhausted budget ``-inf``."""
    reps = np.flatnonzero(clusters.alive)
    order = np.concatenate([clusters.members[r] for r in reps])
    lengths = np.array([len(clusters.members[r]) for r in reps])
    starts = np.cumsum(lengths) - lengths
    work = np.full(sim.shape, NEG)
    for r in reps:
        rows = clusters.members[r]
        row = ((sim[rows] + sim[:, rows].T) / 2).min(axis=0)
        work[r, reps] = np.minimum.reduceat(row[order], starts)
    work[reps, reps] = NEG
    clusters.forbid_exhausted(work)
    return work

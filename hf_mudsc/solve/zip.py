"""Zip mode: greedy merging of the most similar clusters of units (ZipIt! / MuDSC).

The rule (see :func:`solve_zip`) is the textbook O(n^3) loop; this implementation keeps,
for every cluster, the best partner and its similarity, updates them with one vectorised
pass per merge and recomputes a row only when its cached partner disappeared or was
forbidden, which makes 2 x 3072 units a matter of seconds.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..quality import MergeQualityWarning
from .solution import Solution, as_matrix, canonical_labels, check_sizes, make_solution, tie_key

NEG = -np.inf
_RECOMPUTE_ROWS = 16  # rows of the work matrix re-read at a time for their best partner


def solve_zip(sim: Any, sizes: Sequence[int], k: int | None = None, budget: float = 0.0,
              decay: float = 0.0, symmetric: bool = False, work: np.ndarray | None = None) -> Solution:
    """Merge the units of all models into ``k`` merged units (default ``max(sizes)``).

    Start with every unit as its own cluster and repeatedly merge the allowed pair of
    clusters with the highest similarity (ties: lowest first index, then lowest second
    index) until ``k`` clusters remain. Similarity of two units: ``(sim + sim.T) / 2``.
    After merging A and B, the similarity of the new cluster to any C is
    ``decay * min(s(A, C), s(B, C))``; ``decay = 0`` means a merged cluster is never merged
    again. With three models or more, a cluster that holds at most one unit of each model
    is *completed* by another such cluster of other models without the decay (at
    ``min(s(A, C), s(B, C))``, decay 0 included): the third copy of a unit joins the pair
    its two copies formed, rather than another unit's leftover (with two models no merged
    cluster is ever completed: every other cluster holds one of its models). A merge of two
    clusters that both hold units of model m is a same-model merge
    of m; model m may make at most ``floor(budget * sizes[m])`` of them (so that
    ``sizes[m] - #merged units reached by m`` never exceeds it); pairs over a budget are
    not allowed.

    When no allowed pair is left before ``k`` is reached (with decay 0, merged clusters that
    no cluster completes are frozen), the merging goes on with the same greedy rule ignoring
    the decay (cluster similarity = the minimum over member pairs, decay 1), still within
    budgets: this is how a cluster grows past two members. If that is stuck too (greedy
    choices can leave clusters that overlap in models), :func:`_complete` finishes around
    anchor clusters by linear assignment, still within budgets whenever ``k`` allows it.
    So exactly ``k`` merged units always come out, and a budget is exceeded only when no
    partition into ``k`` units respects it (``k < sizes[m] - floor(budget * sizes[m])``):
    ``Solution.over_budget`` names those models and a :class:`MergeQualityWarning` says so.

    Every comparison reads :func:`tie_key` of ``(sim + sim.T) / 2``, so ties do not depend
    on the last bits of a float. ``symmetric``: ``sim`` is exactly symmetric (as every matrix of
    the coordinate descent), so that sum is ``sim`` itself and is not computed (one transposed pass
    over the matrix less); a sample of its entries is checked. ``work``: a float64 matrix of ``sim``'s
    shape (not ``sim``) that the greedy may use and overwrite instead of a new one (a caller solving
    many large spaces allocates it once: a new 6144^2 matrix costs several times its arithmetic in
    page faults).
    """
    sizes = check_sizes(sizes)
    sim = as_matrix(sim, sizes)
    if work is not None and (work.shape != sim.shape or work.dtype != sim.dtype or np.may_share_memory(work, sim)):
        raise ValueError(f"work must be a float64 {sim.shape} matrix apart from sim")
    k = max(sizes) if k is None else int(k)
    if not 1 <= k <= sum(sizes):
        raise ValueError(f"k must be in [1, {sum(sizes)}], got {k}")
    if not (0.0 <= budget <= 1.0 and 0.0 <= decay <= 1.0):
        raise ValueError(f"budget and decay must be in [0, 1], got {budget} and {decay}")
    if symmetric:
        _check_symmetric(sim)
    clusters = _Clusters(sizes, budget)
    if not _greedy(_initial(tie_key(sim, symmetrise=not symmetric, out=work), clusters), clusters, decay, k):
        key = tie_key(sim, symmetrise=not symmetric)  # computed again: the greedy's work array was the first copy
        if not _greedy(_linkage(key, clusters), clusters, 1.0, k):
            _complete(key, clusters, k)
    over = clusters.over_budget()
    if over:
        warnings.warn(f"zip into {k} units: no partition respects the same-model budget {budget} of "
                      f"model(s) {list(over)}; their extra units were merged with their best cluster",
                      MergeQualityWarning, stacklevel=2)
    return make_solution(sim, canonical_labels(clusters.labels()), sizes, over)


def _check_symmetric(sim: np.ndarray, samples: int = 4096) -> None:
    """Raise if ``sim`` differs from its transpose at one of a seeded sample of entries."""
    rows, cols = np.random.default_rng(0).integers(0, len(sim), size=(2, samples))
    if not np.array_equal(sim[rows, cols], sim[cols, rows]):
        raise ValueError("symmetric=True, but the similarity matrix is not symmetric")


class _Clusters:
    """Current clusters, indexed by their smallest member; same-model merge budgets."""

    def __init__(self, sizes: list[int], budget: float) -> None:
        n = sum(sizes)
        self.sizes = np.asarray(sizes)
        self.model = model = np.repeat(np.arange(len(sizes)), sizes)
        self.members: list[list[int]] = [[u] for u in range(n)]
        self.alive = np.ones(n, dtype=bool)
        self.has = np.zeros((n, len(sizes)), dtype=bool)
        self.has[np.arange(n), model] = True
        self.repeated = np.zeros(n, dtype=bool)  # a cluster holding two units of one model
        self.used = np.zeros(len(sizes), dtype=np.int64)
        self.caps = np.floor(budget * np.asarray(sizes, dtype=np.float64) + 1e-9)

    def count(self) -> int:
        return int(self.alive.sum())

    def completion(self, a: int, b: int) -> np.ndarray:
        """Which clusters complete ``a`` merged with ``b`` (before :meth:`merge`): both hold at most
        one unit of each model, and no model in common."""
        if (self.has[a] & self.has[b]).any() or self.repeated[a] or self.repeated[b]:
            return np.zeros(len(self.alive), dtype=bool)
        return ~(self.has & (self.has[a] | self.has[b])).any(axis=1) & ~self.repeated

    def merge(self, a: int, b: int) -> np.ndarray:
        """Merge cluster ``b`` into ``a`` (``a < b``); return the models whose budget this
        merge used up."""
        cost = self.has[a] & self.has[b]
        self.repeated[a] |= self.repeated[b] | cost.any()
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

    def over_budget(self) -> list[int]:
        """Models whose same-model merges (units minus the clusters they reach) exceed their cap."""
        reached = self.has[self.alive].sum(axis=0)
        return [int(m) for m in np.flatnonzero(self.sizes - reached > self.caps)]


def _greedy(work: np.ndarray, clusters: _Clusters, decay: float, k: int) -> bool:
    """Merge the best allowed pair of ``work`` (cluster similarities, ``-inf`` = not
    allowed) until ``k`` clusters remain; False if stuck before. Updates ``work`` and
    ``clusters`` in place.

    Columns of clusters that can no longer merge (merged away, or merged with
    ``decay = 0``) are not written (strided writes dominate the cost): ``dead`` (0 for a
    live column, ``-inf`` for one that can no longer merge) is added wherever a row is read.
    """
    live = clusters.alive.copy()
    dead = np.where(live, 0.0, NEG)
    completes = len(clusters.sizes) > 2
    best_idx = work.argmax(axis=1)
    best_val = work[np.arange(len(work)), best_idx]
    for _ in range(clusters.count() - k):  # one merge each
        a = int(np.argmax(best_val))
        if best_val[a] == NEG:
            return False
        b = int(best_idx[a])
        live[b], dead[b] = False, NEG
        if completes:
            row = np.minimum(work[a], work[b])
            other = ~clusters.completion(a, b)  # clusters that would not complete a + b: decayed
            row[other] = decay * row[other] if decay > 0 else NEG
            row += dead
            work[a], work[:, a] = row, row
            if not np.isfinite(row).any():
                live[a], dead[a] = False, NEG
        elif decay > 0:
            row = decay * np.minimum(work[a], work[b])
            row += dead
            work[a], work[:, a] = row, row
        else:
            live[a], dead[a] = False, NEG
            row = np.full(len(work), NEG)
        stale = (best_idx == a) | (best_idx == b)
        for model in clusters.merge(a, b):
            stale[clusters.forbid(work, model)] = True
        stale &= live
        stale[a] = live[a]
        best_val[a] = best_val[b] = NEG
        _improve(best_val, best_idx, row, a, ~stale)
        _recompute(work, dead, best_val, best_idx, np.flatnonzero(stale))
    return True


def _improve(best_val: np.ndarray, best_idx: np.ndarray, column: np.ndarray, col: int,
             rows: np.ndarray) -> None:
    """Take column ``col`` (values ``column``) as the best of ``rows`` where it beats the
    cached best (ties: the lower index)."""
    better = rows & ((column > best_val)
                     | ((column == best_val) & (col < best_idx) & (column > NEG)))
    best_val[better] = column[better]
    best_idx[better] = col


def _recompute(work: np.ndarray, dead: np.ndarray, best_val: np.ndarray,
               best_idx: np.ndarray, rows: np.ndarray) -> None:
    """Best live partner of each of ``rows`` (``dead``: 0 for a live column, ``-inf`` for another),
    :data:`_RECOMPUTE_ROWS` rows at a time (a copy of a few rows, ``dead`` added in place: ten times
    faster than ``np.where`` over many rows at 2 x 3072 units)."""
    for start in range(0, len(rows), _RECOMPUTE_ROWS):
        chunk = rows[start:start + _RECOMPUTE_ROWS]
        vals = work[chunk]
        vals += dead
        idx = vals.argmax(axis=1)
        best_idx[chunk] = idx
        best_val[chunk] = vals[np.arange(len(chunk)), idx]


def _initial(key: np.ndarray, clusters: _Clusters) -> np.ndarray:
    """Similarity of singleton clusters: ``key`` (symmetric) itself, changed in place, with
    self-pairs and pairs over an exhausted budget ``-inf``."""
    np.fill_diagonal(key, NEG)
    clusters.forbid_exhausted(key)
    return key


def _linkage(key: np.ndarray, clusters: _Clusters) -> np.ndarray:
    """Similarity of the current clusters ignoring decay: the minimum of ``key`` over their
    member pairs; pairs over an exhausted budget ``-inf``."""
    reps = np.flatnonzero(clusters.alive)
    order = np.concatenate([clusters.members[r] for r in reps])
    lengths = np.array([len(clusters.members[r]) for r in reps])
    starts = np.cumsum(lengths) - lengths
    work = np.full(key.shape, NEG)
    for r in reps:
        row = key[clusters.members[r]].min(axis=0)
        work[r, reps] = np.minimum.reduceat(row[order], starts)
    work[reps, reps] = NEG
    clusters.forbid_exhausted(work)
    return work


def _complete(key: np.ndarray, clusters: _Clusters, k: int) -> None:
    """Finish a stuck greedy with ``k`` clusters, within budgets whenever ``k`` allows it.

    The ``k`` *slots* are the live clusters holding a unit of the anchor model (the widest,
    lowest index among equals), then the others by size (largest first) and index; every
    other cluster is dissolved. Model by model (in index order), the freed units join the
    slots that lack that model, by linear assignment on their minimum similarity to the
    slot's members; a slot lacking the model is always there for a unit while ``k`` is at
    least the model's width. Only units beyond that join their best slot (a same-model merge).
    """
    anchor = int(np.argmax(clusters.sizes))
    ranked = sorted(np.flatnonzero(clusters.alive),
                    key=lambda r: (not clusters.has[r, anchor], -len(clusters.members[r]), r))
    slots, freed = np.array(ranked[:k]), ranked[k:]
    clusters.alive[freed] = False
    free = np.sort(np.concatenate([clusters.members[r] for r in freed]))
    for m in range(len(clusters.sizes)):
        units = free[clusters.model[free] == m]
        if not len(units):
            continue
        link = np.stack([key[np.ix_(units, clusters.members[s])].min(axis=1) for s in slots], axis=1)
        open_ = np.flatnonzero(~clusters.has[slots, m])
        rows, cols = linear_sum_assignment(link[:, open_], maximize=True)
        target = np.full(len(units), -1)
        target[rows] = open_[cols]
        for i in np.flatnonzero(target < 0):  # only when k < width of model m
            target[i] = int(np.argmax(link[i]))
        for unit, slot in zip(units, slots[target]):
            clusters.members[slot].append(int(unit))
        clusters.has[slots[target], m] = True

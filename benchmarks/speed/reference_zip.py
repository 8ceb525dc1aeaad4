"""The straightforward O(n^3) loop of the zip rule of ``hf_mudsc.solve.solve_zip``.

Not part of the package: the tests check the fast solver against it and
``solvers.py`` times both. Every step masks the whole cluster similarity matrix and
takes its first maximum in row-major order.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def reference_zip(sim: np.ndarray, sizes: Sequence[int], k: int | None = None,
                  budget: float = 0.0, decay: float = 0.0) -> list[np.ndarray]:
    """Per-model cluster labels (the smallest member's global index) of the zip rule."""
    sim = np.asarray(sim, dtype=np.float64)
    sym = (sim + sim.T) / 2
    n, n_models = len(sym), len(sizes)
    k = max(sizes) if k is None else k
    has = np.zeros((n, n_models), dtype=bool)
    has[np.arange(n), np.repeat(np.arange(n_models), sizes)] = True
    caps = np.floor(budget * np.asarray(sizes, dtype=np.float64) + 1e-9)
    used = np.zeros(n_models)
    members = [[u] for u in range(n)]
    alive, fresh = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
    scores, phase = sym.copy(), 1
    while alive.sum() > k:
        allowed = _allowed(alive, fresh if phase == 1 and decay == 0 else alive, has,
                           used >= caps if phase < 3 else np.zeros(n_models, dtype=bool))
        if not allowed.any():
            phase += 1
            scores = _complete_linkage(sym, members, alive)
            continue
        a, b = divmod(int(np.where(allowed, scores, -np.inf).argmax()), n)
        used += has[a] & has[b]
        has[a] |= has[b]
        members[a] += members[b]
        alive[b], fresh[a] = False, False
        new = (decay if phase == 1 else 1.0) * np.minimum(scores[a], scores[b])
        scores[a], scores[:, a] = new, new
    labels = np.empty(n, dtype=np.int64)
    for rep in np.flatnonzero(alive):
        labels[members[rep]] = rep
    return np.split(labels, np.cumsum(sizes)[:-1])


def _allowed(alive: np.ndarray, mergeable: np.ndarray, has: np.ndarray,
             exhausted: np.ndarray) -> np.ndarray:
    """Pairs of distinct live, mergeable clusters that no exhausted budget forbids."""
    ok = (alive & mergeable)[:, None] & (alive & mergeable)[None, :]
    np.fill_diagonal(ok, False)
    for m in np.flatnonzero(exhausted):
        ok &= ~(has[:, m][:, None] & has[:, m][None, :])
    return ok


def _complete_linkage(sym: np.ndarray, members: list[list[int]],
                      alive: np.ndarray) -> np.ndarray:
    """Minimum of ``sym`` over member pairs, for every pair of live clusters."""
    scores = np.zeros_like(sym)
    for a in np.flatnonzero(alive):
        for b in np.flatnonzero(alive):
            scores[a, b] = sym[np.ix_(members[a], members[b])].min()
    return scores

"""The straightforward O(n^3) loop of the zip rule of ``hf_mudsc.solve.solve_zip``.

Not part of the package: the tests check the fast solver against it and
``solvers.py`` times both. Every step masks the whole cluster similarity matrix and
takes its first maximum in row-major order. Similarities are rounded to 9 decimals first,
as the solver's ``tie_key`` does. Two clusters that hold at most one unit of each model and
no model in common *complete* each other: their similarity is not decayed, and they may
merge at decay 0 (which freezes every other merged cluster).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def reference_zip(sim: np.ndarray, sizes: Sequence[int], k: int | None = None,
                  budget: float = 0.0, decay: float = 0.0) -> list[np.ndarray]:
    """Per-model cluster labels (the smallest member's global index) of the zip rule."""
    sim = np.asarray(sim, dtype=np.float64)
    sym = np.round((sim + sim.T) / 2, 9)
    n, n_models = len(sym), len(sizes)
    k = max(sizes) if k is None else k
    has = np.zeros((n, n_models), dtype=bool)
    has[np.arange(n), np.repeat(np.arange(n_models), sizes)] = True
    counts = has.astype(np.int64)
    caps = np.floor(budget * np.asarray(sizes, dtype=np.float64) + 1e-9)
    used = np.zeros(n_models)
    members = [[u] for u in range(n)]
    alive, fresh = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
    scores, phase = sym.copy(), 1
    while alive.sum() > k:
        allowed = _allowed(alive, fresh if phase == 1 and decay == 0 else alive, has, used >= caps)
        if phase == 1 and decay == 0:
            allowed |= _completing(counts, has) & alive[:, None] & alive[None, :]
        if not allowed.any():
            if phase == 2:
                _fill_slots(sym, sizes, members, alive, has, k)
                break
            phase += 1
            scores = _complete_linkage(sym, members, alive)
            continue
        a, b = divmod(int(np.where(allowed, scores, -np.inf).argmax()), n)
        used += has[a] & has[b]
        has[a] |= has[b]
        counts[a] += counts[b]
        members[a] += members[b]
        alive[b], fresh[a] = False, False
        new = np.minimum(scores[a], scores[b])
        if phase == 1:
            new = np.where(_completing(counts, has)[a], new, decay * new)
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


def _completing(counts: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Pairs of clusters that complete each other: at most one unit of each model in both, no model shared."""
    proper = counts.max(axis=1) <= 1
    ok = proper[:, None] & proper[None, :] & ~(has.astype(np.int64) @ has.T.astype(np.int64) > 0)
    np.fill_diagonal(ok, False)
    return ok


def _complete_linkage(sym: np.ndarray, members: list[list[int]],
                      alive: np.ndarray) -> np.ndarray:
    """Minimum of ``sym`` over member pairs, for every pair of live clusters."""
    scores = np.zeros_like(sym)
    for a in np.flatnonzero(alive):
        for b in np.flatnonzero(alive):
            scores[a, b] = sym[np.ix_(members[a], members[b])].min()
    return scores


def _fill_slots(sym: np.ndarray, sizes: Sequence[int], members: list[list[int]], alive: np.ndarray,
                has: np.ndarray, k: int) -> None:
    """The solver's last phase, plainly: keep ``k`` slot clusters (those with a unit of the
    widest model first, then by size, then by index), free the rest, and give each model's
    freed units to the slots lacking it by linear assignment on minimum linkage; units
    beyond the free slots go to their best slot."""
    anchor = int(np.argmax(sizes))
    live = [int(r) for r in np.flatnonzero(alive)]
    live.sort(key=lambda r: (not has[r, anchor], -len(members[r]), r))
    slots = live[:k]
    freed = sorted(u for r in live[k:] for u in members[r])
    for r in live[k:]:
        alive[r] = False
    model_of = np.repeat(np.arange(len(sizes)), sizes)
    for m in range(len(sizes)):
        units = [u for u in freed if model_of[u] == m]
        if not units:
            continue
        link = np.array([[min(sym[u, v] for v in members[s]) for s in slots] for u in units])
        lacking = [j for j, s in enumerate(slots) if not has[s, m]]
        rows, cols = linear_sum_assignment(link[:, lacking], maximize=True)
        chosen = dict(zip(rows.tolist(), [lacking[c] for c in cols]))
        for i, u in enumerate(units):
            slot = slots[chosen[i]] if i in chosen else slots[int(np.argmax(link[i]))]
            members[slot].append(u)
            has[slot, m] = True

"""Attention spaces: one head assignment shared by the spaces of a head group (the QK and
VO spaces of one layer), then a solve inside every tuple of matched heads."""
from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .assignment import match_to_reference, solve_permute
from .solution import Solution, as_matrix, canonical_labels, check_sizes, make_solution, tie_key
from .zip import solve_zip

Mode = Literal["permute", "zip"]


def solve_heads(sims: Sequence[Any], sizes: Sequence[int], num_heads: int | Sequence[int],
                head_dim: int, mode: Mode, budget: float = 0.0,
                decay: float = 0.0) -> list[Solution]:
    """Solve the spaces of one head group with one shared head assignment.

    Units of model i in every space are ``num_heads[i]`` heads of ``head_dim`` units. Head
    ``b`` of model i scores against head ``a`` of the reference (the model with most heads,
    lowest index among equals: model 0 when counts are equal) by the mean matched
    similarity of a linear assignment inside their ``head_dim x head_dim`` block, summed
    over the spaces; heads are matched by linear assignment on that score. Merged heads
    are numbered by their smallest global head (model 0's head order first; heads of a
    larger model that no model-0 head was matched to come after, as their own merged
    heads). Merged head h holds merged units ``[h * head_dim, (h + 1) * head_dim)`` in
    every space: inside it each space is solved separately on the matched heads' units
    with :func:`solve_permute` or with :func:`solve_zip` (``k = head_dim``, same
    ``budget`` and ``decay``, budgets per head), so head boundaries are never crossed.
    Head scores and every assignment read :func:`tie_key` values. Returns one
    :class:`Solution` per space, in the order of ``sims``.
    """
    sizes = check_sizes(sizes)
    heads = _head_counts(num_heads, sizes, head_dim)
    mats = [as_matrix(sim, sizes) for sim in sims]
    if not mats:
        raise ValueError("solve_heads needs at least one similarity matrix")
    if mode not in ("permute", "zip"):
        raise ValueError(f"mode must be 'permute' or 'zip', got {mode!r}")
    offsets = np.cumsum(sizes) - sizes
    units = [[np.arange(o + h * head_dim, o + (h + 1) * head_dim) for h in range(n)]
             for o, n in zip(offsets, heads)]
    keys = [tie_key(sim) for sim in mats]
    groups = match_to_reference(lambda r, i: tie_key(_head_scores(keys, units[r], units[i])), heads)
    merged = np.split(canonical_labels(np.concatenate(groups)), np.cumsum(heads)[:-1])
    tuples = [np.concatenate([units[i][h] for i in range(len(heads))
                              for h in np.flatnonzero(merged[i] == g)])
              for g in range(max(heads))]
    return [_solve_space(sim, tuples, sizes, head_dim, mode, budget, decay) for sim in mats]


def _head_counts(num_heads: int | Sequence[int], sizes: list[int], head_dim: int) -> list[int]:
    """Per-model head counts, checked against the widths."""
    heads = [num_heads] * len(sizes) if isinstance(num_heads, (int, np.integer)) \
        else list(num_heads)
    if len(heads) != len(sizes) or any(h * head_dim != s for h, s in zip(heads, sizes)):
        raise ValueError(f"widths {sizes} are not num_heads {heads} x head_dim {head_dim}")
    return [int(h) for h in heads]


def _head_scores(mats: list[np.ndarray], ref_heads: list[np.ndarray],
                 heads: list[np.ndarray]) -> np.ndarray:
    """Score of every (reference head, head) pair: mean matched similarity of a linear
    assignment inside the pair's block, summed over the spaces."""
    scores = np.zeros((len(ref_heads), len(heads)))
    for sim in mats:
        for a, rows in enumerate(ref_heads):
            for b, cols in enumerate(heads):
                block = sim[np.ix_(rows, cols)]
                r, c = linear_sum_assignment(block, maximize=True)
                scores[a, b] += block[r, c].mean()
    return scores


def _solve_space(sim: np.ndarray, tuples: list[np.ndarray], sizes: list[int], head_dim: int,
                 mode: Mode, budget: float, decay: float) -> Solution:
    """Solve one space inside every merged head; merged head h gets units
    ``h * head_dim + [0, head_dim)``."""
    labels = np.empty(len(sim), dtype=np.int64)
    for h, idx in enumerate(tuples):
        sub = sim[np.ix_(idx, idx)]
        sub_sizes = [head_dim] * (len(idx) // head_dim)
        sol = solve_permute(sub, sub_sizes) if mode == "permute" \
            else solve_zip(sub, sub_sizes, k=head_dim, budget=budget, decay=decay)
        labels[idx] = h * head_dim + sol.labels()
    return make_solution(sim, labels, sizes)

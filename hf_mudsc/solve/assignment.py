"""Permutation mode: every model is matched one-to-one to a reference model by linear
assignment (Git Re-Basin / activation matching)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .solution import Solution, as_matrix, canonical_labels, check_sizes, make_solution, tie_key


def solve_permute(sim: Any, sizes: Sequence[int]) -> Solution:
    """Match every model's units one-to-one to a reference model's units.

    The reference is the widest model (the lowest index among equals, so model 0 when all
    widths are equal); every other model ``i`` is matched to it by
    ``linear_sum_assignment(maximize=True)`` on the cross block ``sim[ref, i]``, and
    ``k = max(sizes)``. Merged units are numbered by their smallest global member, so
    ``assign[0] == arange(sizes[0])`` always; when model 0 is narrower, the merged units it
    does not reach come after its own. A narrower model leaves ``k - sizes[i]`` merged units
    without a member of its own. The assignment reads :func:`tie_key` of ``sim``.
    """
    sizes = check_sizes(sizes)
    sim = as_matrix(sim, sizes)
    offsets = np.cumsum(sizes) - sizes
    blocks = [slice(o, o + s) for o, s in zip(offsets, sizes)]
    key = tie_key(sim)
    groups = match_to_reference(lambda r, i: key[blocks[r], blocks[i]], sizes)
    return make_solution(sim, canonical_labels(np.concatenate(groups)), sizes)


def match_to_reference(score: Callable[[int, int], np.ndarray],
                       sizes: Sequence[int]) -> list[np.ndarray]:
    """Group the items of all models by matching each to the widest model (lowest index
    among equals), the reference ``r``.

    ``score(r, i)`` is the ``sizes[r] x sizes[i]`` matrix to maximise by linear assignment.
    Returns, per model, the reference item each item is matched to (the reference's items
    map to themselves); these group ids are not yet in canonical order.
    """
    ref = int(np.argmax(sizes))
    groups = []
    for i, size in enumerate(sizes):
        group = np.arange(size, dtype=np.int64)
        if i != ref:
            rows, cols = linear_sum_assignment(score(ref, i), maximize=True)
            group[cols] = rows
        groups.append(group)
    return groups

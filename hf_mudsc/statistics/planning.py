"""Where each model's units sit in a space's feature vector, and which spaces one pass collects."""
from __future__ import annotations

from typing import Iterable, Sequence

from ..unitmaps.spaces import UnitMap

_BYTES_PER_UNIT_SQUARED = 8  # one float64 entry of the D x D accumulator




def model_slices(unit_maps: Sequence[UnitMap], space: str) -> list[slice]:
    """Where model i's units of ``space`` sit in the concatenated feature vector."""
    out, start = [], 0
    for um in unit_maps:
        dim = um[space].dim
        out.append(slice(start, start + dim))
        start += dim
    return out


def plan_space_groups(unit_maps: Sequence[UnitMap], memory_budget_bytes: int) -> list[list[str]]:
    """Group the observed spaces (those with sites) so that each pass's float64 D x D
    accumulators fit the budget.

    First-fit decreasing; within a group the spaces keep the unit-map order. Only the
    accumulators are counted, not one batch's activations. Raises ``ValueError`` if one
    space alone does not fit.
    """
    names = _space_names(unit_maps, None)
    cost = {n: _BYTES_PER_UNIT_SQUARED * sum(um[n].dim for um in unit_maps) ** 2 for n in names}
    groups: list[list[str]] = []
    loads: list[int] = []
    for name in sorted(names, key=lambda n: -cost[n]):
        if cost[name] > memory_budget_bytes:
            raise ValueError(
                f"space '{name}' alone needs {cost[name]} bytes of accumulators, over the budget of {memory_budget_bytes}"
            )
        slot = next((g for g, load in enumerate(loads) if load + cost[name] <= memory_budget_bytes), None)
        if slot is None:
            groups.append([])
            loads.append(0)
            slot = len(groups) - 1
        groups[slot].append(name)
        loads[slot] += cost[name]
    order = {n: i for i, n in enumerate(names)}
    return [sorted(g, key=order.__getitem__) for g in groups]


def _space_names(unit_maps: Sequence[UnitMap], spaces: Iterable[str] | None) -> list[str]:
    """The requested space names (by default model 0's spaces that have sites), checked against every map."""
    if not unit_maps:
        raise ValueError("no unit maps given")
    names = [s.name for s in unit_maps[0].spaces if s.sites] if spaces is None else list(spaces)
    for i, um in enumerate(unit_maps):
        missing = [n for n in names if n not in um]
        if missing:
            raise ValueError(f"unit map {i} ('{um.family}') has no space(s) {missing}")
    for n in names:
        counts = {len(um[n].sites) for um in unit_maps}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"space '{n}' must have the same non-zero number of sites in every unit map, got {sorted(counts)}")
    return names


"""What in collected statistics may make a merge poor: few samples, constant units."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..unitmaps.spaces import UnitMap
from .planning import model_slices
from .symmetric import SymmetricBlocks


def calibration_issues(samples: Mapping[str, int], unit_maps: Sequence[UnitMap],
                       corr: Mapping[str, SymmetricBlocks]) -> dict[str, list[dict[str, Any]]]:
    """What in the collected statistics may make a merge poor, per kind of issue:

    - ``few_samples``: spaces with fewer samples than units (of the widest parent): the
      activation correlations are then rank-deficient, so the matching is poorly determined;
      ``{"space", "samples", "units"}``;
    - ``constant``: spaces with units whose activation is constant on the calibration data
      (dead units, zeroed layers, a single example): their activation similarity is 0;
      ``{"space", "constant": [count per model], "units": [units per model]}``.

    ``samples``: the samples per space; ``corr``: the correlations (:meth:`Moments.correlation`,
    whose diagonal is 0 exactly for constant units).
    """
    few, constant = [], []
    for name, n in samples.items():
        units = [um[name].dim for um in unit_maps]
        if n < max(units):
            few.append({"space": name, "samples": n, "units": max(units)})
        if n == 0:
            continue
        diag = corr[name].diagonal()
        dead = [int((diag[sl] == 0).sum()) for sl in model_slices(unit_maps, name)]
        if any(dead):
            constant.append({"space": name, "constant": dead, "units": units})
    return {"few_samples": few, "constant": constant}


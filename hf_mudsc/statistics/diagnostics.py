"""What in collected statistics may make a merge poor: few samples, constant units, repeated inputs."""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Sequence

from torch import Tensor

from ..spill import tensor_bytes
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


def distinct_inputs(batches: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """``(distinct, samples)``: how many of the calibration samples differ from every other, and how
    many there are. A sample is its row of every input tensor (a text's real tokens only): repeated
    rows, empty texts and images that came out alike (a saturated 16-bit image) count once."""
    seen, samples = set(), 0
    for batch in batches:
        tensors = {k: v for k, v in sorted(batch.items()) if isinstance(v, Tensor) and v.dim() > 0}
        if not tensors:
            continue
        n = len(next(iter(tensors.values())))
        mask = tensors.get("attention_mask")
        for i in range(n):
            digest = hashlib.blake2b(digest_size=16)
            for key, value in tensors.items():
                row = value[i]
                if mask is not None and key != "attention_mask" and row.shape[:1] == mask[i].shape:
                    row = row[mask[i].bool()]
                digest.update(key.encode())
                digest.update(tensor_bytes(row))
            seen.add(digest.digest())
        samples += n
    return len(seen), samples

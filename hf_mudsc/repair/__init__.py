"""Closed-form repairs run after a merge is applied, on calibration data only (no labels, no
gradient): ``stats`` (REPAIR renormalisation), ``lsq`` (layer-wise least squares) and ``heads``
(task-head refit). They change the merged weights in place; everything downstream (task models,
joint model, saved folder) reads those weights unchanged. Not part of the published methods."""
from __future__ import annotations

import time
from typing import Any, Callable, Collection, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..apply import MergedWeights
from ..transforms import Transforms
from ..unitmaps.spaces import UnitMap
from .context import RepairContext
from .heads import repair_heads
from .least_squares import repair_least_squares
from .norm_stats import repair_stats

# Run order: renormalise, then re-solve the trunk's maps, then the heads on the final trunk.
REPAIRS: dict[str, Callable[[RepairContext], dict[str, Any]]] = {
    "stats": repair_stats,
    "lsq": repair_least_squares,
    "heads": repair_heads,
}
REPAIR_TITLES = {
    "stats": "REPAIR-style renormalisation of attention-output and FFN pre-activation units (Jordan et al., ICLR 2023)",
    "lsq": "layer-wise least-squares re-solve of every merged linear map (RegMean / PLeaS style)",
    "heads": "task-head refit: ridge regression of each parent's head outputs on the merged model's head inputs",
}


def apply_repairs(
    names: Sequence[str],
    parents: Sequence[torch.nn.Module],
    unit_maps: Sequence[UnitMap],
    transforms: Transforms,
    weights: MergedWeights,
    batches: Sequence[Mapping[str, Tensor]],
    *,
    seed: int = 0,
    max_tokens_per_batch: int | None = None,
    alone: Sequence[Collection[str]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run the repairs ``names`` (in registry order) on ``weights`` in place (``progress``: a bar
    over the repairs); one report row each
    (``repair``, wall ``seconds``, ``cpu_seconds`` of this process, what it changed). ``parents``:
    as merged (a shallower parent expanded with identity layers); ``alone``: as given to
    :func:`~hf_mudsc.apply.apply_transforms` (the parameters merged from one parent alone)."""
    if not batches:
        raise ValueError("repairs need calibration batches: none were given")
    ctx = RepairContext(parents, unit_maps, transforms, weights, list(batches), seed, max_tokens_per_batch, alone)
    rows = []
    for name in tqdm([n for n in REPAIRS if n in names], desc="repairing", unit="repair", disable=not progress):
        start, cpu = time.perf_counter(), time.process_time()
        done = REPAIRS[name](ctx)
        rows.append({"repair": name, "seconds": round(time.perf_counter() - start, 3),
                     "cpu_seconds": round(time.process_time() - cpu, 3), **done})
    return rows

"""Closed-form repairs run after a merge is applied, on calibration data only (no labels, no
gradient): ``stats`` (REPAIR renormalisation), ``lsq`` (layer-wise least squares) and ``heads``
(task-head refit). They change the merged weights in place; everything downstream (task models,
joint model, saved folder) reads those weights unchanged. Not part of the published methods."""
from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..apply import MergedWeights
from ..statistics.collect import eval_mode
from ..transforms import Transforms
from ..unitmaps.spaces import UnitMap
from .context import RepairContext
from .recorded import ParentOutputs
from .walk import Clock, walk

# name -> what it does, in run order: renormalise, then re-solve the trunk's maps, then the heads on
# the final trunk (one forward walk runs all three, :mod:`.walk`)
REPAIRS: dict[str, str] = {
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
    recorded: ParentOutputs | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run the repairs ``names`` (in registry order) on ``weights`` in place, in one forward walk
    (:mod:`.walk`; ``progress``: a bar); one report row each (``repair``, the calibration ``samples``
    it ran on, wall ``seconds`` and ``cpu_seconds`` of this process spent for it, a step serving
    several split evenly; what it changed). ``parents``:
    as merged (a shallower parent expanded with identity layers); ``alone``: as given to
    :func:`~hf_mudsc.apply.apply_transforms` (the parameters merged from one parent alone); ``recorded``:
    the parents' outputs kept by the statistics pass, read where they are what the repairs would compute
    (:mod:`.recorded`)."""
    if not batches:
        raise ValueError("repairs need calibration batches: none were given")
    ctx = RepairContext(parents, unit_maps, transforms, weights, list(batches), seed, max_tokens_per_batch, alone,
                         recorded)
    chosen = [n for n in REPAIRS if n in names]
    clock = Clock(chosen)
    with tqdm(total=1, desc=f"repairing ({', '.join(chosen)})", unit="walk", disable=not progress) as bar, \
            eval_mode(parents):  # a parent in train mode would give its targets with dropout
        done = walk(ctx, chosen, clock)
        bar.update(1)
    samples = sum(len(next(iter(b.values()))) for b in batches)
    return [{"repair": n, "samples": samples, "seconds": round(clock.seconds[n], 3),
             "cpu_seconds": round(clock.cpu[n], 3), **done[n]} for n in chosen]

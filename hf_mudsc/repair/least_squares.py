"""``lsq``: every shared linear map re-solved by least squares (RegMean / PLeaS style).

In forward order, each map of a merged layer gets ``argmin ||X W - Y||^2 + lam ||W - W_merged||^2``
(:mod:`.ridge`): ``X`` are the merged model's own inputs to the map (so earlier corrections are
seen), ``Y`` the parents' outputs of the same map on the same tokens, brought into the merged frame
by ``M_i`` and summed over parents, as the merge itself averages them (a map of a deep layer
without a partner: the deep parent's outputs alone, weighted as merged, see
:meth:`.context.RepairContext.to_merged`). The layer-by-layer walk is :mod:`.walk`; this module
holds the refit of a list of map groups and the summed targets.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from .context import RepairContext, Site
from .ridge import RidgeSums

Observe = Callable[[Sequence[Site], int], dict[Site, Tensor]]  # (sites, batch) -> rows per site
Targets = Callable[[Sequence[str], int], dict[str, Tensor]]  # (maps, batch) -> wanted outputs per map


def refit_linears(ctx: RepairContext, model: nn.Module, groups: Sequence[Sequence[str]], inputs: Observe,
                  targets: Targets, task: int | None = None) -> None:
    """Re-solve each group of linear maps of ``model`` in turn: inputs observed by ``inputs`` on the
    model as corrected so far, wanted outputs from ``targets(group, batch)``; ``task=None``: shared maps."""
    for group in groups:
        sums = {m: RidgeSums(model.get_submodule(m).bias is not None) for m in group}
        for b in range(len(ctx.batches)):
            seen = inputs([(m, "input") for m in group], b)
            wanted = targets(group, b)
            for m in group:
                sums[m].update(seen[(m, "input")], wanted[m])
        for m in group:
            module = model.get_submodule(m)
            weight, bias = sums[m].solve(module.weight, module.bias)
            ctx.set_linear(m, weight, bias, task)


def averaged_outputs(ctx: RepairContext, parents: Sequence[Observe]) -> Targets:
    """Targets: the parents' outputs of each map, in the merged frame, summed over the parents that
    run the map (``M_i`` averages; see :meth:`RepairContext.to_merged`)."""
    def targets(group: Sequence[str], b: int) -> dict[str, Tensor]:
        wanted: dict[str, Tensor] = {}
        for i, observe in enumerate(parents):
            mine = [m for m in group if i in ctx.sources(m)]
            if not mine:
                continue
            seen = observe([(m, "output") for m in mine], b)
            for m in mine:
                y = ctx.to_merged(m, seen[(m, "output")], i, 1)
                wanted[m] = y if m not in wanted else wanted[m] + y
        return wanted
    return targets

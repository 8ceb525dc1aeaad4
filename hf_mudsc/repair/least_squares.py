"""``lsq``: every shared linear map re-solved by least squares (RegMean / PLeaS style).

In forward order, each map of a merged layer gets ``argmin ||X W - Y||^2 + lam ||W - W_merged||^2``
(:mod:`.ridge`): ``X`` are the merged model's own inputs to the map (so earlier corrections are
seen), ``Y`` the parents' outputs of the same map on the same tokens, brought into the merged frame
by ``M_i`` and summed over parents, as the merge itself averages them (a map of a deep layer
without a partner: the deep parent's outputs alone, weighted as merged, see
:meth:`.context.RepairContext.to_merged`). Layers run from cached inputs
(:class:`.context.LayerInputs`): each parent runs each layer once (every target of the layer is
captured on the way), the merged model once per group of maps and once to advance; maps after the
last layer (BERT's pooler) from full passes.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from .context import LayerInputs, RepairContext, Site
from .ridge import RidgeSums

Observe = Callable[[Sequence[Site], int], dict[Site, Tensor]]  # (sites, batch) -> rows per site


def refit_linears(ctx: RepairContext, model: nn.Module, groups: Sequence[Sequence[str]], inputs: Observe,
                  targets: Callable[[Sequence[str], int], dict[str, Tensor]], task: int | None = None) -> None:
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


def _layer_targets(ctx: RepairContext, parents: Sequence[LayerInputs],
                   groups: Sequence[Sequence[str]]) -> Callable[[Sequence[str], int], dict[str, Tensor]]:
    """Targets of one layer's maps, from one run of each parent's layer (which moves the parents'
    caches to the next layer): the parents' outputs in the merged frame, summed over the parents that
    run each map (:meth:`RepairContext.to_merged`)."""
    seen = [runner.advance([(m, "output") for g in groups for m in g if i in ctx.sources(m)])
            for i, runner in enumerate(parents)]
    captured = [lambda sites, b, rows=rows: {site: rows[b][site] for site in sites} for rows in seen]
    return _averaged_outputs(ctx, captured)


def _averaged_outputs(ctx: RepairContext, parents: Sequence[Observe]) -> Callable[[Sequence[str], int], dict[str, Tensor]]:
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


def repair_least_squares(ctx: RepairContext) -> dict[str, object]:
    """Re-solve every shared linear map in forward order; returns what it did."""
    model = ctx.task_model(0)
    groups = ctx.forward_groups(model, ctx.shared_linears())
    blocks = ctx.blocks()
    per_layer = [[g for g in groups if g[0].startswith(block + ".")] for block in blocks]
    depth = max((l + 1 for l, gs in enumerate(per_layer) if gs), default=0)
    if depth:
        merged, *parents = (LayerInputs(ctx, m, blocks) for m in (model, *ctx.parents))
        for l in range(depth):
            refit_linears(ctx, model, per_layer[l], merged.observe, _layer_targets(ctx, parents, per_layer[l]))
            if l + 1 < depth:
                merged.advance()
    tail = [g for g in groups if not any(g[0].startswith(block + ".") for block in blocks)]
    full = [lambda sites, b, p=p: ctx.observe(p, sites, b) for p in ctx.parents]
    refit_linears(ctx, model, tail, lambda sites, b: ctx.observe(model, sites, b), _averaged_outputs(ctx, full))
    return {"maps": sum(len(g) for g in groups)}

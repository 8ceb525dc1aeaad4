"""``lsq``: every shared linear map re-solved by least squares (RegMean / PLeaS style).

In forward order, each map of a merged layer gets ``argmin ||X W - Y||^2 + lam ||W - W_merged||^2``
(:mod:`.ridge`): ``X`` are the merged model's own inputs to the map (so earlier corrections are
seen), ``Y`` the parents' outputs of the same map on the same tokens, brought into the merged frame
by ``M_i`` and summed over parents, as the merge itself averages them.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from .context import RepairContext
from .ridge import RidgeSums


def refit_linears(ctx: RepairContext, model: nn.Module, groups: Sequence[Sequence[str]],
                  targets: Callable[[int, Sequence[str]], dict[str, Tensor]], task: int | None = None) -> None:
    """Re-solve each group of linear maps of ``model`` in turn: inputs from ``model`` (as corrected so
    far), wanted outputs from ``targets(batch, group)``; ``task=None``: the maps are shared."""
    for group in groups:
        sums = {m: RidgeSums(model.get_submodule(m).bias is not None) for m in group}
        for b in range(len(ctx.batches)):
            inputs = ctx.observe(model, [(m, "input") for m in group], b)
            wanted = targets(b, group)
            for m in group:
                sums[m].update(inputs[(m, "input")], wanted[m])
        for m in group:
            module = model.get_submodule(m)
            weight, bias = sums[m].solve(module.weight, module.bias)
            ctx.set_linear(m, weight, bias, task)


def repair_least_squares(ctx: RepairContext) -> dict[str, object]:
    """Re-solve every shared linear map in forward order; returns what it did."""
    model = ctx.task_model(0)
    groups = ctx.forward_groups(model, ctx.shared_linears())

    def merged_outputs(b: int, group: Sequence[str]) -> dict[str, Tensor]:
        sites = [(m, "output") for m in group]
        seen = [ctx.observe(parent, sites, b) for parent in ctx.parents]
        return {m: sum(ctx.transforms[ctx.output_space(m)].merge(s[(m, "output")], i, 1) for i, s in enumerate(seen))
                for m in group}

    refit_linears(ctx, model, groups, merged_outputs)
    return {"maps": sum(len(g) for g in groups), "passes": len(groups)}

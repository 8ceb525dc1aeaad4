"""``stats``: REPAIR (Jordan et al., ICLR 2023) for LayerNorm transformers.

The units written by each merged layer's attention output projection (into the residual stream)
and its first FFN linear (pre-activation) are rescaled and shifted, in forward order, so that
their mean and standard deviation over the calibration tokens equal the merge-weighted average of
the parents' matched units (each parent's per-unit statistics brought into the merged frame by
``M_i`` and summed; a map of a deep layer without a partner: as the merge weighted it, see
:meth:`.context.RepairContext.to_merged`). The affine correction is folded into the map's weight
rows and bias.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .context import LayerInputs, RepairContext, Site


class UnitMoments:
    """Streamed float64 per-unit mean and (population) standard deviation, shifted by the first
    batch's mean so that the variance does not cancel."""

    def __init__(self) -> None:
        self.n = 0
        self.shift = self.s1 = self.s2 = None

    def update(self, x: Tensor) -> None:
        x = x.to(torch.float64)
        if self.shift is None:
            self.shift = x.mean(dim=0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros_like(self.shift)
        y = x - self.shift
        self.s1 += y.sum(dim=0)
        self.s2 += (y * y).sum(dim=0)
        self.n += x.shape[0]

    def mean_std(self) -> tuple[Tensor, Tensor]:
        if self.n == 0:
            raise ValueError("no samples to measure unit statistics on")
        m = self.s1 / self.n
        return self.shift + m, (self.s2 / self.n - m * m).clamp(min=0).sqrt()


def _renormalise(ctx: RepairContext, model: torch.nn.Module, name: str,
                 observe: Callable[[Sequence[Site], int], dict[Site, Tensor]], target: tuple[Tensor, Tensor]) -> None:
    """Fold ``y -> (y - mean) * want_std / std + want_mean`` (per unit) into the map ``name``."""
    module = model.get_submodule(name)
    if module.bias is None:
        raise ValueError(f"'{name}' has no bias, so its units cannot be shifted")
    measured = UnitMoments()
    for b in range(len(ctx.batches)):
        measured.update(observe([(name, "output")], b)[(name, "output")])
    mean, std = measured.mean_std()
    want_mean, want_std = (v.to(mean.device) for v in target)
    scale = torch.where(std > 0, want_std / std.clamp(min=torch.finfo(torch.float64).tiny), torch.ones_like(std))
    weight = module.weight.detach().to(torch.float64) * scale.unsqueeze(1)
    bias = module.bias.detach().to(torch.float64) * scale + (want_mean - scale * mean)
    ctx.set_linear(name, weight, bias)


def stats_modules(ctx: RepairContext) -> list[str]:
    """The shared attention output projections and first FFN linears: the maps that write the
    ``residual`` space from a ``vo`` space, or write an ``ffn`` space."""
    out = []
    for module in ctx.shared_linears():
        reads = {s.name for s, m in ctx.members(f"{module}.weight") if m.role == "in"}
        writes = ctx.output_space(module)
        if (writes == "residual" and any(n.endswith(".vo") for n in reads)) or writes.endswith(".ffn"):
            out.append(module)
    return out


def repair_stats(ctx: RepairContext) -> dict[str, object]:
    """Renormalise the chosen units of every merged layer; returns what it did."""
    modules = stats_modules(ctx)
    if not modules:
        return {"maps": 0, "note": "no merged attention output or FFN layer"}
    targets: dict[str, tuple[Tensor, Tensor]] = {}
    for i, parent in enumerate(ctx.parents):
        mine = [m for m in modules if i in ctx.sources(m)]  # not the identity layers of a shallower parent
        if not mine:
            continue
        moments = {m: UnitMoments() for m in mine}
        for b in range(len(ctx.batches)):
            seen = ctx.observe(parent, [(m, "output") for m in mine], b)
            for m in mine:
                moments[m].update(seen[(m, "output")])
        for m in mine:
            mean, std = (ctx.to_merged(m, v, i, 0) for v in moments[m].mean_std())
            old = targets.get(m)
            targets[m] = (mean, std) if old is None else (old[0] + mean, old[1] + std)
    model = ctx.task_model(0)
    order = [m for group in ctx.forward_groups(model, modules) for m in group]
    blocks = ctx.blocks()
    merged = LayerInputs(ctx, model, blocks)
    for l, block in enumerate(blocks):
        inside = [m for m in order if m.startswith(block + ".")]
        if not inside:
            break  # a partial merge: no shared layer from here on
        if l:
            merged.advance()
        for m in inside:  # one map at a time: each correction changes what the later maps see
            _renormalise(ctx, model, m, merged.observe, targets[m])
    return {"maps": len(modules)}

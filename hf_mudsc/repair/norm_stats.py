"""``stats``: REPAIR (Jordan et al., ICLR 2023) for LayerNorm transformers.

The units written by each merged layer's attention output projection (into the residual stream)
and its first FFN linear (pre-activation) are rescaled and shifted, in forward order, so that
their mean and standard deviation over the calibration tokens equal the merge-weighted average of
the parents' matched units (each parent's per-unit statistics brought into the merged frame by
``M_i`` and summed; a map of a deep layer without a partner: as the merge weighted it, see
:meth:`.context.RepairContext.to_merged`). The affine correction is folded into the map's weight
rows and bias. The layer-by-layer walk that measures and applies it is :mod:`.walk`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .context import RepairContext


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


def renormalised(weight: Tensor, bias: Tensor, measured: tuple[Tensor, Tensor],
                 target: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The map ``(weight, bias)`` with ``y -> (y - mean) * want_std / std + want_mean`` (per output
    unit) folded in: ``measured``, the map's output mean and std; ``target``, the wanted ones (float64)."""
    mean, std = measured
    want_mean, want_std = (v.to(mean.device) for v in target)
    scale = torch.where(std > 0, want_std / std.clamp(min=torch.finfo(torch.float64).tiny), torch.ones_like(std))
    return (weight.detach().to(torch.float64) * scale.unsqueeze(1),
            bias.detach().to(torch.float64) * scale + (want_mean - scale * mean))


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

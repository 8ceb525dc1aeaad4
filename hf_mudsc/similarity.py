"""Unit similarity: activation correlation, weight correlation, and their dual-space blend.

All matrices are square over the concatenated units of all models (model i's units at
``offsets[i]:offsets[i] + d_i``), float64 numpy arrays with values in [-1, 1].
"""
from __future__ import annotations

from typing import Collection, Mapping, Sequence

import numpy as np
import torch

from .transforms import Transforms
from .unitmaps.spaces import UnitMap


def weight_similarity(
    space: str,
    unit_maps: Sequence[UnitMap],
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    transforms: Transforms,
    aligned: Collection[str] | None = None,
) -> np.ndarray:
    """Correlation of every unit's weights across all members of ``space``.

    A unit's weight vector concatenates its slice of every member (its row where the tensor
    writes the space, its column where it reads it); each tensor's *other* axes are first
    brought into the merged frame by the current ``transforms`` (model i alone, averaged
    within the model), so that units of different models are compared in one frame.
    Every feature is standardised across the units of all models first, so that a member
    whose values share a large offset (LayerNorm gammas near 1) adds its deviations, not a
    constant that would make every pair of units look alike.
    Task heads are left out: their label axes mean different things in different tasks.
    ``aligned``: when given, only members whose other axes all lie in these spaces (or in no
    space) count, so that nothing is compared across models in frames not yet aligned.
    """
    device = next(iter(state_dicts[0].values())).device  # the weights' device: a GPU when the parents are there
    dim = sum(m[space].dim for m in unit_maps)
    # standardised features are O(1): float32 products and sums are accurate to ~1e-6 here
    gram = torch.zeros(dim, dim, dtype=torch.float32, device=device)
    sums = torch.zeros(dim, dtype=torch.float64, device=device)
    features = 0
    for member in unit_maps[0][space].members:
        if member.param in unit_maps[0].task_heads or any(member.param not in sd for sd in state_dicts):
            continue  # a head, or a layer that another model lacks (a deeper parent's layer without a partner)
        if aligned is not None and any(m.axis != member.axis and other.name not in aligned
                                       for other, m in unit_maps[0].param_members()[member.param]):
            continue
        rows = [_unit_rows(member.param, member.axis, i, unit_maps[i], state_dicts[i], transforms)
                for i in range(len(unit_maps))]
        if len({r.shape[1] for r in rows}) != 1:
            continue  # other axes of different sizes (width heterogeneity outside the merged frame)
        z = _standardise(torch.cat(rows))
        gram.addmm_(z, z.T)
        sums += z.sum(dim=1, dtype=torch.float64)
        features += z.shape[1]
    if features == 0:
        return np.eye(dim)
    mean = sums / features
    cov = gram.to(torch.float64).div_(features).sub_(torch.outer(mean, mean))
    std = cov.diagonal().clamp(min=0).sqrt()
    inv = torch.where(std > 1e-6, 1.0 / std.clamp(min=1e-300), torch.zeros_like(std))  # constant unit -> 0
    corr = cov.mul_(inv[:, None]).mul_(inv[None, :]).clamp_(-1.0, 1.0)
    return ((corr + corr.T) / 2).cpu().numpy()


def _unit_rows(param: str, axis: int, i: int, umap: UnitMap, state_dict: Mapping[str, torch.Tensor],
               transforms: Transforms) -> torch.Tensor:
    """Model i's tensor (float32) with its other axes in the merged frame, as (units, features)."""
    x = state_dict[param].detach().to(torch.float32)
    for other, member in umap.param_members()[param]:
        if member.axis != axis and other.name in transforms:
            x = transforms[other.name].project(x, i, member.axis)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance per feature (column) across units, in place; constant features -> 0."""
    std, mean = torch.std_mean(x, dim=0, unbiased=False, keepdim=True)
    inv = torch.where(std > 0, 1.0 / std.clamp(min=1e-30), 0.0)
    return x.sub_(mean).mul_(inv)


def blend(alpha: float, weight: np.ndarray | None, activation: np.ndarray | None) -> np.ndarray:
    """``alpha * S_w + (1 - alpha) * S_act``; a missing term counts as weight 0."""
    if weight is None and activation is None:
        raise ValueError("no similarity for this space: give calibration data or use alpha = 1")
    if alpha >= 1.0 or activation is None:
        return weight  # type: ignore[return-value]
    if alpha <= 0.0 or weight is None:
        return activation
    return alpha * weight + (1.0 - alpha) * activation

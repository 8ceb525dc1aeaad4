"""Transforms -> merged weights (DESIGN §3.5).

Every parameter of model i is transformed on each axis it has in a merged space: axes that
write the space by ``M_i``, axes that read it by ``U_i``. A *shared* parameter (owned by a
merged layer) is the sum over models of its transformed copies. A *private* parameter (a task
head, or a layer past ``merge_layers``) stays with its task: it reads merged spaces through
``U_i`` and writes them through ``pinv(U_i)``, so each task is still a standard checkpoint.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

import torch

from .transforms import Transforms
from .unitmaps.spaces import MergeSpace, Member, UnitMap


@dataclass
class MergedWeights:
    """Merged parameters: ``shared`` by every task plus each task's ``private`` ones."""

    shared: dict[str, torch.Tensor]
    private: list[dict[str, torch.Tensor]]

    def task_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """All parameters of task ``i``'s model in the merged frame."""
        return {**self.shared, **self.private[i]}


def is_merged(layer: int, merge_layers: int, num_layers: int) -> bool:
    """Whether a layer is merged when the first ``merge_layers`` layers are.

    Embeddings (layer -1) always are; what follows the last layer (layer ``num_layers``:
    final norm, pooler) only in a full merge.
    """
    return layer < merge_layers or merge_layers >= num_layers


def apply_transforms(
    unit_maps: Sequence[UnitMap],
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    transforms: Transforms,
    merge_layers: int | None = None,
    alone: Sequence[Collection[str]] | None = None,
) -> MergedWeights:
    """Build the merged parameters of all tasks.

    ``unit_maps[i]`` describes ``state_dicts[i]`` (parameters only, validated); ``transforms``
    holds every merged space (spaces of unmerged layers are ignored); ``merge_layers=None``
    merges every layer. ``alone[i]``: shared parameters of model i that no other model shares
    (a deeper parent's layer without a partner): they write through ``pinv(U_i)``, not ``M_i``.
    """
    if len(unit_maps) != len(state_dicts):
        raise ValueError("one unit map per model is needed")
    n_layers = unit_maps[0].num_layers
    depth = n_layers if merge_layers is None else merge_layers
    if not 0 <= depth <= n_layers:
        raise ValueError(f"merge_layers must be in [0, {n_layers}], got {merge_layers}")
    missing = [s.name for s in unit_maps[0].spaces if is_merged(s.layer, depth, n_layers) and s.name not in transforms]
    if missing:
        raise ValueError(f"no transform given for merged spaces {missing}")

    shared: dict[str, torch.Tensor] = {}
    private: list[dict[str, torch.Tensor]] = [{} for _ in state_dicts]
    by_param = [umap.param_members() for umap in unit_maps]
    # parameter by parameter, each cast to its dtype once summed: one float64 tensor at a time (all of
    # them at once were twice the model's size in memory, which the allocator then kept)
    for name in dict.fromkeys(n for sd in state_dicts for n in sd):
        total = None
        for i, (umap, sd) in enumerate(zip(unit_maps, state_dicts)):
            if name not in sd:
                continue
            owner = umap.param_layer(name)
            share = name not in umap.task_heads and is_merged(owner, depth, n_layers)
            active = [(s, m) for s, m in by_param[i].get(name, []) if is_merged(s.layer, depth, n_layers)]
            solo = alone is not None and name in alone[i]
            out = _transform(sd[name], i, active, transforms, share and not solo)
            if share:
                total = out if total is None else total + out
            else:
                private[i][name] = out.to(sd[name].dtype)
        if total is not None:
            shared[name] = total.to(next(sd[name].dtype for sd in state_dicts if name in sd))
    return MergedWeights(shared, [{n: p[n] for n in sd if n in p} for sd, p in zip(state_dicts, private)])


def _transform(
    tensor: torch.Tensor,
    i: int,
    pairs: Sequence[tuple[MergeSpace, Member]],
    transforms: Transforms,
    shared: bool,
) -> torch.Tensor:
    """Apply model ``i``'s transforms on every axis in ``pairs`` (float64 inside)."""
    x = tensor.detach().to(device="cpu", dtype=torch.float64)  # parents may sit on different devices
    for space, member in pairs:
        t = transforms[space.name]
        if member.role == "in":
            x = t.unmerge(x, i, member.axis)
        elif shared:
            x = t.merge(x, i, member.axis)
        else:
            x = t.project(x, i, member.axis)
    return x


def build_task_model(parent: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                     config: Any = None, reuse: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """A standard model of the parent's class on the CPU carrying ``state_dict`` (in the parent's
    dtype, copied) and the parent's buffers. Built on the meta device: no random init to discard.
    ``config``: the merged model's config (default: the parent's). ``reuse``: parameters taken as
    they are instead (not copied, not moved; another model's, which this one then shares)."""
    config = copy.deepcopy(parent.config if config is None else config)
    with torch.device("meta"):
        model = _without_absent_modules(type(parent)(config), parent)
    reuse = reuse or {}
    state = {k: reuse[k] if k in reuse else v.detach().to(device="cpu", dtype=parent.dtype, copy=True)
             for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    params = {n for n, _ in model.named_parameters()}
    if unexpected or params & set(missing):
        raise ValueError(f"merged weights do not fit {type(parent).__name__}: missing {sorted(params & set(missing))[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    for name, buf in parent.named_buffers():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = buf.detach().to("cpu", copy=True)
    return model.eval()


def _without_absent_modules(model: torch.nn.Module, parent: torch.nn.Module) -> torch.nn.Module:
    """Drop the optional submodules that the parent was built without (``None`` there), which its
    config alone does not tell: e.g. ``BertModel(config, add_pooling_layer=False)`` has ``pooler=None``."""
    for name in [n for n, _ in model.named_modules() if n]:
        owner, _, attr = name.rpartition(".")
        try:
            absent = getattr(parent.get_submodule(owner), attr, False) is None
            holder = model.get_submodule(owner)
        except AttributeError:  # inside a module dropped already, or not in the parent at all
            continue
        if absent and getattr(holder, attr, None) is not None:
            setattr(holder, attr, None)
    return model

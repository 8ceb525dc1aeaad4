"""Parents of different depths (DESIGN §4): layer alignment by CKA, and the shallower parent read
as a parent of the deeper depth.

The hidden states after every layer of both parents are compared by linear CKA on the
calibration data; :func:`~hf_mudsc.hetero.cka.align_layers` maps every shallow layer to a deep
layer (strictly increasing, maximal summed CKA). The shallow parent is then *expanded*: a copy of
it with the deep depth, its own layers at their partners' positions and a parameter-free
:class:`IdentityLayer` at every other position. It runs exactly as the shallow parent, so the
usual statistics pass, solve and apply see two parents of one depth. A deep layer without a
partner is merged from the deep parent alone: its own units (and zero units up to the merged
width), its reads through ``U``, its writes to the residual stream either kept whole
(``unpaired_layers="keep"``: ``pinv(U)``) or averaged with the identity layer's zero writes
(``"average"``: ``M``, what merging with a zeroed pre-LN layer gives).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..loading import Parent, ParentError
from ..statistics.collect import eval_mode, model_device, to_device
from ..transforms import SpaceTransform, Transforms
from ..unitmaps import unit_map_of
from ..unitmaps.spaces import UnitMap
from .cka import LayerCKA, align_layers

# Families whose layers normalise before attention and FFN (a layer with zeroed residual writes is
# an exact identity); in post-LN families (BERT, RoBERTa) no layer of the same form is.
PRE_LN_FAMILIES = frozenset({"vit", "deit"})


@dataclass(frozen=True)
class DepthPlan:
    """Which parent is deeper, and where every layer of the shallower one goes.

    ``layer_map[s]``: the deep layer partnered with shallow layer ``s``; ``cka[s, d]``: linear
    CKA of shallow layer ``s`` and deep layer ``d`` (hidden states after the layers), ``None``
    for a map given by hand.
    """

    deep: int
    shallow: int
    layer_map: tuple[int, ...]
    cka: np.ndarray | None
    depth: int

    @property
    def unpaired(self) -> list[int]:
        """Deep layers without a partner."""
        return [d for d in range(self.depth) if d not in self.layer_map]

    def to_dict(self) -> dict[str, Any]:
        """For the report, the recipe and the card."""
        return {"deep_parent": self.deep, "shallow_parent": self.shallow, "depth": self.depth,
                "layer_map": list(self.layer_map), "unpaired_deep_layers": self.unpaired,
                "pair_cka": None if self.cka is None
                else [round(float(self.cka[s, d]), 4) for s, d in enumerate(self.layer_map)]}


class IdentityLayer(nn.Module):
    """A layer that returns its hidden states unchanged (a position of the expanded shallow parent
    that no shallow layer took)."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


def layer_blocks(umap: UnitMap) -> list[str]:
    """Module names of the layers, in order (the residual stream's sites are their inputs)."""
    return [site.module for site in umap["residual"].sites[: umap.num_layers]]


def collect_layer_cka(
    models: Sequence[nn.Module],
    unit_maps: Sequence[UnitMap],
    batches: Iterable[Mapping[str, Any]],
    *,
    max_tokens_per_batch: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """CKA (layers of model 0 x layers of model 1) of the hidden states after every layer.

    Every real token is a sample (the ``attention_mask`` drops padding), every patch and CLS
    token of an image; ``max_tokens_per_batch`` keeps a seeded random subset, the same for
    every layer and both models.
    """
    seen: list[list[Tensor | None]] = [[None] * um.num_layers for um in unit_maps]
    handles = []

    def keep(m: int, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            seen[m][layer] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    for m, (model, um) in enumerate(zip(models, unit_maps)):
        for layer, name in enumerate(layer_blocks(um)):
            handles.append(model.get_submodule(name).register_forward_hook(keep(m, layer)))
    dims = [[um["residual"].dim] * um.num_layers for um in unit_maps]
    acc = LayerCKA(*dims)
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad(), eval_mode(models):
            for batch in tqdm(batches, desc="layer alignment (CKA)", unit="batch", disable=not progress):
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                for model in models:
                    model(**to_device(inputs, model_device(model)))
                rows = _sample_rows(seen[0][0], batch.get("attention_mask"), max_tokens_per_batch, generator)
                acc.update(*[[t.reshape(-1, t.shape[-1])[rows.to(t.device)] for t in layers] for layers in seen])
    finally:
        for h in handles:
            h.remove()
    return acc.matrix()


def _sample_rows(hidden: Tensor, mask: Tensor | None, cap: int | None, generator: torch.Generator) -> Tensor:
    """Flat indices of the tokens that count: real tokens, capped by a random subset."""
    if mask is not None and tuple(mask.shape) == tuple(hidden.shape[:2]):
        rows = mask.detach().cpu().flatten().nonzero().squeeze(1)
    else:
        rows = torch.arange(hidden.shape[:-1].numel())
    if cap is not None and rows.numel() > cap:
        rows = rows[torch.randperm(rows.numel(), generator=generator)[:cap].sort().values]
    return rows


def plan_depth(parents: Sequence[Parent], cka: np.ndarray | None = None, layer_map: Sequence[int] | None = None) -> DepthPlan:
    """The plan of two parents of different depths, from their CKA (deep parent first: ``cka`` is
    (layers of parent 0, layers of parent 1)) or from a given ``layer_map`` (shallow -> deep)."""
    depths = [p.unit_map.num_layers for p in parents]
    deep = int(np.argmax(depths))
    shallow = 1 - deep
    if layer_map is not None:
        mapping = tuple(int(d) for d in layer_map)
        if len(mapping) != depths[shallow] or any(b <= a for a, b in zip(mapping, mapping[1:])) \
                or not all(0 <= d < depths[deep] for d in mapping):
            raise ParentError(f"layer_map {list(layer_map)} is not a strictly increasing map of "
                              f"{depths[shallow]} layers into {depths[deep]}")
        return DepthPlan(deep, shallow, mapping, None if cka is None else _shallow_rows(cka, deep), depths[deep])
    score = _shallow_rows(cka, deep)
    return DepthPlan(deep, shallow, align_layers(score), score, depths[deep])


def _shallow_rows(cka: np.ndarray, deep: int) -> np.ndarray:
    return np.asarray(cka).T if deep == 0 else np.asarray(cka)


def expand_parent(parent: Parent, plan: DepthPlan) -> Parent:
    """The shallow parent as a parent of the deep depth: its layers at their partners'
    positions, :class:`IdentityLayer` elsewhere (a copy; the parent is not changed)."""
    model = copy.deepcopy(parent.model)
    owner = layer_blocks(parent.unit_map)[0].rpartition(".")[0]
    layers = model.get_submodule(owner)
    partner = {d: s for s, d in enumerate(plan.layer_map)}
    expanded = nn.ModuleList([layers[partner[d]] if d in partner else IdentityLayer() for d in range(plan.depth)])
    holder, _, attr = owner.rpartition(".")
    setattr(model.get_submodule(holder) if holder else model, attr, expanded)
    model.config.num_hidden_layers = plan.depth
    return Parent(parent.name, model, unit_map_of(model), parent.processor, parent.sha256(), parent.revision)


def unpaired_spaces(umap: UnitMap, plan: DepthPlan) -> list[str]:
    """Spaces of the deep layers without a partner (solved by no data: the deep parent alone)."""
    layers = set(plan.unpaired)
    return [s.name for s in umap.spaces if s.layer in layers]


def unpaired_transforms(unit_maps: Sequence[UnitMap], plan: DepthPlan) -> Transforms:
    """The deep parent's own units, in order, for every space of an unpaired layer; the merged
    units past its width (a wider shallow parent) are held by the shallow parent's empty
    identity layer, so they come out zero (an exact no-op unit or head)."""
    out: Transforms = {}
    deep = unit_maps[plan.deep]
    for name in unpaired_spaces(deep, plan):
        d, k = deep[name].dim, max(um[name].dim for um in unit_maps)
        assign = [torch.arange(d) if i == plan.deep else torch.arange(d, k) for i in range(len(unit_maps))]
        out[name] = SpaceTransform(tuple(assign), k)
    return out


def residual_writes(umap: UnitMap, layer: int) -> set[str]:
    """Parameters with which ``layer`` writes the residual stream (attention output and second
    FFN linear: weights and biases), as opposed to what it reads or normalises."""
    own = {s.name for s in umap.spaces if s.layer == layer}
    writers = {m.param.rpartition(".")[0] for s in umap.spaces if s.name in own for m in s.readers}
    return {m.param for m in umap["residual"].writers
            if m.layer == layer and m.param.rpartition(".")[0] in writers}


def alone_params(unit_maps: Sequence[UnitMap], plan: DepthPlan, unpaired_layers: str) -> list[set[str]]:
    """Per parent, the parameters merged alone (``pinv(U)`` on the axes they write): every
    parameter of an unpaired deep layer, except, with ``"average"``, its residual writes."""
    deep = unit_maps[plan.deep]
    names = {m.param for s in deep.spaces for m in s.members if m.layer in set(plan.unpaired)}
    if unpaired_layers == "average":
        for layer in plan.unpaired:
            names -= residual_writes(deep, layer)
    return [names if i == plan.deep else set() for i in range(len(unit_maps))]


def check_plan(family: str, plan: DepthPlan, merge_layers: int | None, unpaired_layers: str) -> None:
    """Refuse what has no exact meaning for post-LN parents: averaging with an identity layer,
    and an identity layer kept in a shallow parent's own copy of the later layers."""
    if family in PRE_LN_FAMILIES or not plan.unpaired:
        return
    if unpaired_layers == "average":
        raise ParentError(f"unpaired_layers='average' needs pre-LN layers (an exact identity layer); {family} "
                          "is post-LN: use unpaired_layers='keep'")
    if merge_layers is not None and merge_layers < plan.depth and max(plan.unpaired) >= merge_layers:
        raise ParentError(f"a partial merge of {family} parents of different depths needs every unpaired deep "
                          f"layer ({plan.unpaired}) merged (post-LN layers have no exact identity): use "
                          f"merge_layers >= {max(plan.unpaired) + 1}")


def identity_private(private: dict[str, Tensor], deep_private: Mapping[str, Tensor], plan: DepthPlan,
                     umap: UnitMap) -> dict[str, Tensor]:
    """The shallow parent's own copy of unpaired layers past ``merge_layers``: zero tensors in the
    deep parent's merged-frame shapes (an all-zero pre-LN layer is an exact identity)."""
    layers = set(plan.unpaired)
    zeros = {n: torch.zeros_like(t) for n, t in deep_private.items()
             if umap.param_layer(n) in layers and n not in umap.task_heads}
    return {**zeros, **private}


def describe_plan(plan: DepthPlan, names: Sequence[str], unpaired_layers: str) -> str:
    """One line for the model card: the layer map with each pair's CKA and the unpaired layers."""
    pairs = ", ".join(f"{s} → {d}" + ("" if plan.cka is None else f" (CKA {plan.cka[s, d]:.3f})")
                      for s, d in enumerate(plan.layer_map))
    line = (f"Layer alignment: '{names[plan.shallow]}' ({len(plan.layer_map)} layers) into '{names[plan.deep]}' "
            f"({plan.depth} layers), shallow layer → deep layer: {pairs}.")
    if plan.unpaired:
        how = ("kept whole (merge weight 1 for the deep parent)" if unpaired_layers == "keep"
               else "with their residual writes averaged with an identity layer")
        line += f" Deep layers {plan.unpaired} have no partner: merged from the deep parent alone, {how}."
    return line

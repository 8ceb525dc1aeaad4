"""Parents of different widths (DESIGN §4): the checks, and the merged model's config.

The engine already zips parents of different widths: every space is solved into
``k = max_i d_i`` merged units (zip budgets are a fraction of each parent's own width; heads are
matched by rectangular assignment and a wider parent's unmatched heads stay heads of their own),
and ``M_i``, ``U_i`` are per parent. What is left is to refuse what cannot be merged and to
describe the merged widths in the config of every output model, and to widen a task head whose
inner width follows the hidden size (RoBERTa's two-layer classifier).
"""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from ..apply import MergedWeights
from ..transforms import Transforms
from ..unitmaps.spaces import UnitMap


def head_dims(umap: UnitMap) -> set[int]:
    """The head dims of a unit map's attention spaces."""
    return {s.heads.head_dim for s in umap.spaces if s.heads is not None}


def width_mismatch(maps: Sequence[UnitMap], names: Sequence[str]) -> str | None:
    """Why parents of different widths cannot be merged (a different head_dim), or ``None``."""
    dims = [head_dims(m) for m in maps]
    for name, d in zip(names[1:], dims[1:]):
        if d != dims[0]:
            return (f"parents have different attention head sizes: '{names[0]}' has head_dim "
                    f"{sorted(dims[0])}, '{name}' {sorted(d)}; merging needs one head_dim")
    return None


def structure_mismatch(models: Sequence[torch.nn.Module], maps: Sequence[UnitMap], names: Sequence[str]) -> str | None:
    """Why parents of different widths cannot be merged: their merged config (each space at its widest)
    builds a model with other parameters than the deepest parent's (an ELECTRA whose merged embedding
    width equals its merged hidden size gets no embedding projection), or ``None``."""
    if not differ_in_width(maps):
        return None
    common = set.intersection(*(set(m.space_names) for m in maps))
    widest = {s: SimpleNamespace(k=max(m[s].dim for m in maps)) for s in common}
    deep = max(range(len(maps)), key=lambda i: maps[i].num_layers)
    theirs = {n for n, _ in models[deep].named_parameters()}
    for model, name in zip(models, names):
        config = merged_config(model.config, widest, maps[deep])  # type: ignore[arg-type]
        built = set(_shapes(model, config))
        if built != theirs:
            fields = ", ".join(f"{f}={getattr(config, f)}" for f in ("hidden_size", *maps[deep].width_fields.values()))
            lost, extra = sorted(theirs - built), sorted(built - theirs)
            return (f"parents of different widths cannot be merged: at the widest widths ({fields}) the merged "
                    f"{type(model).__name__} " + (f"has no '{lost[0]}', which '{name}' has" if lost else
                                                  f"has a '{extra[0]}', which the parents lack"))
    return None


def differ_in_width(maps: Sequence[UnitMap]) -> bool:
    """Whether a space kind (residual, attention, FFN, pooler) differs in width between parents."""
    return len({tuple(sorted(widths(m).items())) for m in maps}) > 1


def widths(umap: UnitMap) -> dict[str, int]:
    """The width of every kind of space of a unit map (one value per kind across layers)."""
    out = {}
    for s in umap.spaces:
        out[s.name.rpartition(".")[2]] = s.dim
    return out


def merged_config(config: PretrainedConfig, transforms: Transforms, umap: UnitMap) -> PretrainedConfig:
    """``config`` with the merged widths and ``umap``'s depth (a copy): ``hidden_size`` from the
    residual stream, ``num_attention_heads`` from the first layer's spaces, the unit map's
    ``width_fields`` (``intermediate_size``, ...) from their spaces, ``pooler_output_size`` (ViT)
    from the pooler, or the hidden size when it has none. A space not merged (a partial merge of
    parents of one width) keeps the parent's value."""
    out = copy.deepcopy(config)
    out.num_hidden_layers = umap.num_layers
    if "residual" in transforms:
        out.hidden_size = transforms["residual"].k
    if "layer.0.qk" in transforms:
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        out.num_attention_heads = transforms["layer.0.qk"].k // head_dim
        if out.num_attention_heads * head_dim != out.hidden_size:  # ViT reads a config's head_dim
            out.head_dim = head_dim
    for space, name in umap.width_fields.items():
        if space in transforms:
            setattr(out, name, transforms[space].k)
    pooled = getattr(config, "pooler_output_size", None)
    if pooled is not None:  # ViT: the pooler's width, the hidden size unless set apart
        out.pooler_output_size = transforms["pooler"].k if "pooler" in transforms \
            else out.hidden_size if pooled == config.hidden_size else pooled
    return out


def widen_heads(weights: MergedWeights, parents: Sequence[torch.nn.Module], unit_maps: Sequence[UnitMap],
                transforms: Transforms) -> None:
    """Pad, in place, each task head parameter of a narrower parent with zeros to its shape under
    the merged config: a head whose inner width is the hidden size (RoBERTa's ``classifier.dense``,
    then ``tanh``, then ``out_proj``) gains units with zero weights and bias, read through zero
    columns: the same function (its activation maps 0 to 0, and it has no norm)."""
    for i, (parent, umap) in enumerate(zip(parents, unit_maps)):
        shapes = _shapes(parent, merged_config(parent.config, transforms, unit_maps[0]))
        for name in umap.task_heads:
            tensor = weights.private[i].get(name)
            want = shapes.get(name)
            if tensor is None or want is None or want == tuple(tensor.shape):
                continue
            if len(want) != tensor.dim() or any(w < d for w, d in zip(want, tensor.shape)):
                raise ValueError(f"task head '{name}' of parent {i} has shape {tuple(tensor.shape)}, which does not "
                                 f"widen to {want} under the merged config")
            weights.private[i][name] = F.pad(tensor, [p for w, d in zip(reversed(want), reversed(tensor.shape))
                                                      for p in (0, w - d)])


def _shapes(model: torch.nn.Module, config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of ``model``'s class built from ``config`` (on the meta device: no memory)."""
    with torch.device("meta"):
        return {n: tuple(p.shape) for n, p in type(model)(config).named_parameters()}

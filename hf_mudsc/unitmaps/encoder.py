"""Unit maps of Transformer encoders, from a small declarative table (:class:`EncoderSpec`).

An encoder family is described by parameter and module names only: what writes the residual
stream in the embeddings, the module paths of one layer (``{i}`` is the layer index), what
comes after the last layer, and which task heads read the trunk. From that table and a
config, :func:`build_encoder_map` lists the spaces: ``residual``, and per layer
``layer.{i}.qk`` / ``layer.{i}.vo`` (one head group) and ``layer.{i}.ffn``; ``pooler`` when
the model has one; ``embeddings`` when the embeddings are narrower than the residual stream and
projected into it (ELECTRA-small).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping

from .spaces import EMBEDDINGS, FFN_WIDTH, Heads, MergeSpace, Member, Site, UnitMap, UnitMapError


@dataclass(frozen=True)
class LayerSpec:
    """Module paths of one encoder layer, relative to the base model, with ``{i}``."""

    block: str
    query: str
    key: str
    value: str
    attn_out: str
    ffn_up: str
    ffn_down: str
    norms: tuple[str, ...]


@dataclass(frozen=True)
class EncoderSpec:
    """Declarative description of an encoder family.

    ``embeddings``: parameter -> axis along which it writes the residual stream (entries
    the model lacks are skipped, e.g. token types, distillation token). ``final_norms``:
    norms after the last layer. ``pooler``: the pooler module (its Linear is ``.dense``;
    its output is observed), if the family has one. ``heads``: task-head parameters (relative to the full model) -> whether they read
    the trunk output (the pooler when present, else the residual stream). ``head_inputs``: a head
    parameter that reads another head parameter's output instead of the trunk's when the model has
    that one (DistilBERT's ``classifier`` after its ``pre_classifier``). ``width_fields``: merge
    space -> the config field that holds its width, beside ``hidden_size`` and
    ``num_attention_heads`` (DistilBERT keeps its FFN width in ``hidden_dim``).
    ``embedding_projection``: a linear module that projects the embeddings into the residual stream
    when the model has it (ELECTRA-small's ``embeddings_project``); the embeddings then form a space
    of their own, ``embeddings``, observed at its input.
    """

    family: str
    base_prefix: str
    embeddings: Mapping[str, int]
    layer: LayerSpec
    final_norms: tuple[str, ...] = ()
    pooler: str | None = None
    heads: Mapping[str, bool] = ()  # type: ignore[assignment]
    head_inputs: Mapping[str, str] = ()  # type: ignore[assignment]
    width_fields: Mapping[str, str] = field(default_factory=lambda: dict(FFN_WIDTH))
    embedding_projection: str | None = None


def build_encoder_map(spec: EncoderSpec, config, names: Collection[str]) -> UnitMap:
    """The unit map of one concrete model (``config``, parameter ``names``)."""
    base = _base_prefix(spec, names)
    n_layers = int(config.num_hidden_layers)
    d = int(config.hidden_size)
    n_heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or d // n_heads)
    ffn = int(getattr(config, spec.width_fields["layer.0.ffn"]))

    residual: list[Member] = []
    spaces: list[MergeSpace] = []
    width_fields = dict(spec.width_fields)
    embedded = [Member(base + p, axis, "out", EMBEDDINGS) for p, axis in spec.embeddings.items() if base + p in names]
    projection = f"{base}{spec.embedding_projection}" if spec.embedding_projection else None
    if projection is not None and f"{projection}.weight" in names:
        width = int(getattr(config, width_fields["embeddings"]))
        spaces.append(MergeSpace("embeddings", width, tuple(embedded + _linear_in([projection], EMBEDDINGS, names)),
                                 (Site(projection, "input"),), EMBEDDINGS))
        residual += _writes([projection], EMBEDDINGS, names, axis=0)
    else:  # the embeddings write the residual stream: their width field follows it (ELECTRA-base)
        residual += embedded
        if "embeddings" in width_fields:
            width_fields["residual"] = width_fields.pop("embeddings")

    for i in range(n_layers):
        lay = {k: base + getattr(spec.layer, k).format(i=i) for k in _MODULES}
        norms = [base + n.format(i=i) for n in spec.layer.norms]
        residual += _linear_in([lay["query"], lay["key"], lay["value"], lay["ffn_up"]], i, names)
        residual += _writes([lay["attn_out"], lay["ffn_down"]], i, names, axis=0)
        residual += _norms(norms, i, names)
        group = f"layer.{i}.attn"
        heads = Heads(n_heads, head_dim)
        qk = _writes([lay["query"], lay["key"]], i, names, axis=0)
        spaces.append(MergeSpace(f"layer.{i}.qk", n_heads * head_dim, tuple(qk),
                                 (Site(lay["query"], "output"), Site(lay["key"], "output")), i, heads, group))
        vo = _writes([lay["value"]], i, names, axis=0) + _linear_in([lay["attn_out"]], i, names)
        spaces.append(MergeSpace(f"layer.{i}.vo", n_heads * head_dim, tuple(vo),
                                 (Site(lay["attn_out"], "input"),), i, heads, group))
        up = _writes([lay["ffn_up"]], i, names, axis=0) + _linear_in([lay["ffn_down"]], i, names)
        spaces.append(MergeSpace(f"layer.{i}.ffn", ffn, tuple(up), (Site(lay["ffn_down"], "input"),), i))

    residual += _norms([base + n for n in spec.final_norms], n_layers, names)
    trunk_out = "residual"
    if spec.pooler is not None and f"{base}{spec.pooler}.dense.weight" in names:
        dense = f"{base}{spec.pooler}.dense"
        residual += _linear_in([dense], n_layers, names)
        members = _writes([dense], n_layers, names, axis=0)
        site = Site(base + spec.pooler, "output", per_token=False)
        spaces.append(MergeSpace("pooler", d, tuple(members), (site,), n_layers))
        trunk_out = "pooler"

    heads = tuple(n for n in spec.heads if n in names)
    after = dict(spec.head_inputs)
    readers = [Member(n, 1, "in", n_layers) for n in heads if spec.heads[n] and after.get(n) not in names]
    if trunk_out == "pooler":
        spaces[-1] = _with_members(spaces[-1], readers)
        readers = []
    blocks = [base + spec.layer.block.format(i=i) for i in range(n_layers)]
    sites = tuple(Site(b, "input") for b in blocks) + ((Site(blocks[-1], "output"),) if blocks else ())
    spaces.insert(0, MergeSpace("residual", d, tuple(residual + readers), sites, EMBEDDINGS))
    return UnitMap(spec.family, n_layers, spaces, heads, width_fields)


_MODULES = ("block", "query", "key", "value", "attn_out", "ffn_up", "ffn_down")


def _base_prefix(spec: EncoderSpec, names: Collection[str]) -> str:
    """``"bert."`` inside a task model, ``""`` in a bare base model."""
    first = next(iter(spec.embeddings))
    if f"{spec.base_prefix}.{first}" in names:
        return f"{spec.base_prefix}."
    if first in names:
        return ""
    raise UnitMapError(f"this is not a '{spec.family}' model: no parameter '{spec.base_prefix}.{first}'")


def _linear_in(modules: list[str], layer: int, names: Collection[str]) -> list[Member]:
    return [Member(f"{m}.weight", 1, "in", layer) for m in modules if f"{m}.weight" in names]


def _writes(modules: list[str], layer: int, names: Collection[str], axis: int) -> list[Member]:
    out = []
    for m in modules:
        out += [Member(f"{m}.{p}", axis if p == "weight" else 0, "out", layer) for p in ("weight", "bias") if f"{m}.{p}" in names]
    return out


def _norms(modules: list[str], layer: int, names: Collection[str]) -> list[Member]:
    return [Member(f"{m}.{p}", 0, "out", layer) for m in modules for p in ("weight", "bias") if f"{m}.{p}" in names]


def _with_members(space: MergeSpace, extra: list[Member]) -> MergeSpace:
    return MergeSpace(space.name, space.dim, space.members + tuple(extra), space.sites, space.layer, space.heads, space.group)

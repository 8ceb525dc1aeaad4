"""Model type -> unit map builder. Users register their own with :func:`register_unit_map`."""
from __future__ import annotations

from functools import partial
from typing import Callable, Collection, Mapping, Sequence

import torch

from .bert import BERT, ELECTRA, ROBERTA
from .distilbert import DISTILBERT
from .encoder import EncoderSpec, build_encoder_map
from .spaces import UnitMap, UnitMapError
from .vit import DEIT, VIT

UnitMapBuilder = Callable[[object, Collection[str]], UnitMap]
"""``builder(config, parameter_names) -> UnitMap``."""

_REGISTRY: dict[str, UnitMapBuilder] = {}


def register_unit_map(model_type: str, builder: UnitMapBuilder | EncoderSpec, *, overwrite: bool = False) -> None:
    """Make ``model_type`` (a ``config.model_type``) mergeable.

    ``builder`` is an :class:`EncoderSpec` (a table of names for a BERT- or ViT-like encoder)
    or any callable ``(config, parameter_names) -> UnitMap``.
    """
    if model_type in _REGISTRY and not overwrite:
        raise ValueError(f"a unit map for '{model_type}' is already registered; pass overwrite=True to replace it")
    _REGISTRY[model_type] = partial(build_encoder_map, builder) if isinstance(builder, EncoderSpec) else builder


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` with a registered unit map."""
    return sorted(_REGISTRY)


def unit_map_for(config, shapes: Mapping[str, Sequence[int]]) -> UnitMap:
    """Build and validate the unit map of a model given its config and parameter shapes."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnitMapError(
            f"model type '{model_type}' is not supported (supported: {', '.join(supported_model_types())}); "
            "register a unit map with hf_mudsc.register_unit_map"
        )
    umap = _REGISTRY[model_type](config, set(shapes))
    umap.validate(shapes)
    return umap


def unit_map_of(model: torch.nn.Module) -> UnitMap:
    """The validated unit map of a loaded model."""
    return unit_map_for(model.config, {n: tuple(p.shape) for n, p in model.named_parameters()})


for _type, _spec in {"bert": BERT, "roberta": ROBERTA, "xlm-roberta": ROBERTA, "camembert": ROBERTA,
                     "electra": ELECTRA, "distilbert": DISTILBERT, "vit": VIT, "deit": DEIT}.items():
    register_unit_map(_type, _spec)

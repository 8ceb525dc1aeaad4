"""Architecture descriptions: merge spaces, head groups and activation sites."""
from .encoder import EncoderSpec, LayerSpec, build_encoder_map
from .registry import register_unit_map, supported_model_types, unit_map_for, unit_map_of
from .spaces import EMBEDDINGS, Heads, Member, MergeSpace, Site, UnitMap, UnitMapError

__all__ = [
    "EMBEDDINGS", "EncoderSpec", "Heads", "LayerSpec", "Member", "MergeSpace", "Site", "UnitMap", "UnitMapError",
    "build_encoder_map", "register_unit_map", "supported_model_types", "unit_map_for", "unit_map_of",
]

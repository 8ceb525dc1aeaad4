"""ViT and DeiT (pre-LN encoders with a CLS token, position embeddings and a patch conv)."""
from __future__ import annotations

from .encoder import EncoderSpec, LayerSpec

_LAYER = LayerSpec(
    block="layers.{i}",
    query="layers.{i}.attention.q_proj",
    key="layers.{i}.attention.k_proj",
    value="layers.{i}.attention.v_proj",
    attn_out="layers.{i}.attention.o_proj",
    ffn_up="layers.{i}.mlp.fc1",
    ffn_down="layers.{i}.mlp.fc2",
    norms=("layers.{i}.layernorm_before", "layers.{i}.layernorm_after"),
)

_EMBEDDINGS = {
    "embeddings.cls_token": 2,
    "embeddings.distillation_token": 2,
    "embeddings.mask_token": 2,
    "embeddings.position_embeddings": 2,
    "embeddings.patch_embeddings.projection.weight": 0,
    "embeddings.patch_embeddings.projection.bias": 0,
}

_HEADS = {
    "classifier.weight": True,
    "classifier.bias": False,
    "cls_classifier.weight": True,
    "cls_classifier.bias": False,
    "distillation_classifier.weight": True,
    "distillation_classifier.bias": False,
}

VIT = EncoderSpec("vit", "vit", _EMBEDDINGS, _LAYER, final_norms=("layernorm",), pooler="pooler", heads=_HEADS)
DEIT = EncoderSpec("deit", "deit", _EMBEDDINGS, _LAYER, final_norms=("layernorm",), pooler="pooler", heads=_HEADS)

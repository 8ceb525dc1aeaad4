"""DistilBERT (a post-LN encoder like BERT's, without token types or pooler, with other names)."""
from __future__ import annotations

from .encoder import EncoderSpec, LayerSpec

_LAYER = LayerSpec(
    block="transformer.layer.{i}",
    query="transformer.layer.{i}.attention.q_lin",
    key="transformer.layer.{i}.attention.k_lin",
    value="transformer.layer.{i}.attention.v_lin",
    attn_out="transformer.layer.{i}.attention.out_lin",
    ffn_up="transformer.layer.{i}.ffn.lin1",
    ffn_down="transformer.layer.{i}.ffn.lin2",
    norms=("transformer.layer.{i}.sa_layer_norm", "transformer.layer.{i}.output_layer_norm"),
)

_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": 1,
    "embeddings.position_embeddings.weight": 1,
    "embeddings.LayerNorm.weight": 0,
    "embeddings.LayerNorm.bias": 0,
}

# Sequence classification (pre_classifier, ReLU, classifier), token classification and extractive QA.
_HEADS = {
    "pre_classifier.weight": True,
    "pre_classifier.bias": False,
    "classifier.weight": True,
    "classifier.bias": False,
    "qa_outputs.weight": True,
    "qa_outputs.bias": False,
}

DISTILBERT = EncoderSpec("distilbert", "distilbert", _EMBEDDINGS, _LAYER, heads=_HEADS,
                         head_inputs={"classifier.weight": "pre_classifier.weight"},
                         width_fields={"layer.0.ffn": "hidden_dim"})

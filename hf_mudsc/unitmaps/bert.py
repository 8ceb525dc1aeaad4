"""BERT, RoBERTa and ELECTRA (post-LN encoders with token-type embeddings; a pooler in BERT and
RoBERTa, an embedding projection in ELECTRA models whose embeddings are narrower than the layers)."""
from __future__ import annotations

from .encoder import EncoderSpec, LayerSpec

_LAYER = LayerSpec(
    block="encoder.layer.{i}",
    query="encoder.layer.{i}.attention.self.query",
    key="encoder.layer.{i}.attention.self.key",
    value="encoder.layer.{i}.attention.self.value",
    attn_out="encoder.layer.{i}.attention.output.dense",
    ffn_up="encoder.layer.{i}.intermediate.dense",
    ffn_down="encoder.layer.{i}.output.dense",
    norms=("encoder.layer.{i}.attention.output.LayerNorm", "encoder.layer.{i}.output.LayerNorm"),
)

_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": 1,
    "embeddings.position_embeddings.weight": 1,
    "embeddings.token_type_embeddings.weight": 1,
    "embeddings.LayerNorm.weight": 0,
    "embeddings.LayerNorm.bias": 0,
}

# Sequence/token classification, multiple choice and extractive QA heads.
_HEADS = {
    "classifier.weight": True,
    "classifier.bias": False,
    "classifier.dense.weight": True,
    "classifier.dense.bias": False,
    "classifier.out_proj.weight": False,
    "classifier.out_proj.bias": False,
    "qa_outputs.weight": True,
    "qa_outputs.bias": False,
}

BERT = EncoderSpec("bert", "bert", _EMBEDDINGS, _LAYER, pooler="pooler", heads=_HEADS)
ROBERTA = EncoderSpec("roberta", "roberta", _EMBEDDINGS, _LAYER, pooler="pooler", heads=_HEADS)
ELECTRA = EncoderSpec("electra", "electra", _EMBEDDINGS, _LAYER, heads=_HEADS,
                      embedding_projection="embeddings_project",
                      width_fields={"layer.0.ffn": "intermediate_size", "embeddings": "embedding_size"})

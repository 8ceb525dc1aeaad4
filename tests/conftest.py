"""Tiny models of every supported family, built from configs (no downloads)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def benchmark_module(name: str, path: str) -> ModuleType:
    """A module of ``benchmarks/`` (``path`` relative to the repository root), loaded by path under
    ``name``: putting a benchmark folder on sys.path would expose its module names to every test."""
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A large init range gives peaked attention, so that mixing up heads changes the output a lot.
KW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, initializer_range=0.3)
VISION = dict(image_size=16, patch_size=4, num_channels=1)

# (family, class name) of every architecture the package ships a map for.
TINY = {
    "bert-seq": ("BertConfig", "BertForSequenceClassification"),
    "bert-base": ("BertConfig", "BertModel"),
    "bert-token": ("BertConfig", "BertForTokenClassification"),
    "roberta-seq": ("RobertaConfig", "RobertaForSequenceClassification"),
    "distilbert-seq": ("DistilBertConfig", "DistilBertForSequenceClassification"),
    "electra-small": ("ElectraConfig", "ElectraForSequenceClassification"),  # embeddings narrower, projected
    "vit-cls": ("ViTConfig", "ViTForImageClassification"),
    "vit-base": ("ViTConfig", "ViTModel"),
    "deit-teacher": ("DeiTConfig", "DeiTForImageClassificationWithTeacher"),
    "deit-cls": ("DeiTConfig", "DeiTForImageClassification"),
}


def tiny_model(kind: str, seed: int = 0, num_labels: int = 3, dtype=torch.float64, **overrides) -> torch.nn.Module:
    """A small randomly initialised model of ``kind`` (a key of ``TINY``), in float64 by
    default so that exactness tests see the transforms, not float32 summation order."""
    cfg_name, cls_name = TINY[kind]
    extra = VISION if cfg_name in ("ViTConfig", "DeiTConfig") else dict(vocab_size=99)
    if cfg_name == "ElectraConfig":
        extra = {**extra, "embedding_size": 24}
    kw = {**KW, **extra, "num_labels": num_labels, **overrides}
    if cfg_name == "DistilBertConfig":  # its FFN width is hidden_dim
        kw["hidden_dim"] = kw.pop("intermediate_size")
    config = getattr(tf, cfg_name)(**kw)
    torch.manual_seed(seed)
    model = getattr(tf, cls_name)(config).to(dtype).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong transform shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_inputs(model: torch.nn.Module, batch: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch for ``model``; text batches are padded (varying lengths)."""
    g = torch.Generator().manual_seed(seed)
    if model.main_input_name == "pixel_values":
        c, s = model.config.num_channels, model.config.image_size
        return {"pixel_values": torch.randn(batch, c, s, s, generator=g, dtype=model.dtype)}
    length = 9
    ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        mask[b, length - (b * 2) % length:] = 0 if b else 1
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The function to compare: logits, or for a base model the pooled output
    (invariant to permutations of the residual stream only through the pooler)."""
    with torch.no_grad():
        out = model(**inputs)
    if hasattr(out, "logits"):
        return out.logits
    return out.pooler_output


@pytest.fixture(params=sorted(TINY))
def kind(request) -> str:
    return request.param

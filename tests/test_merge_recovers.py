"""Through statistics and matching (never given the answer): a model merged with a permuted
copy of itself comes back; weight matching without data recovers the planted permutation."""
from __future__ import annotations

import pytest
import torch

from conftest import outputs, tiny_inputs, tiny_model
from hf_mudsc import MuDSCMerger
from hf_mudsc.transforms import invert
from test_apply import permuted_copy

DATA_PRESETS = [("activation-matching", {}), ("zipit", {}), ("mudsc", {"mode": "zip"}), ("mudsc", {"mode": "permute"})]


def batches(model, n=6, size=8):
    return [tiny_inputs(model, batch=size, seed=100 + i) for i in range(n)]


@pytest.mark.parametrize("kind", ["vit-cls", "bert-seq", "distilbert-seq", "electra-small"])
@pytest.mark.parametrize("method,extra", DATA_PRESETS)
def test_permuted_copy_merges_back(kind, method, extra):
    model = tiny_model(kind)
    copy, _ = permuted_copy(model, seed=4)
    merger = MuDSCMerger.from_pretrained([model, copy], method, **extra)
    result = merger.merge(batches(model), num_samples=48, progress=False)
    x = tiny_inputs(model, seed=7)
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), outputs(model, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind,method,extra", [("bert-seq", "zipit", {}), ("vit-cls", "mudsc", {"repair": "none"}),
                                               ("bert-seq", "mudsc", {"zip_budget": 0.0, "zip_decay": 0.0})])
def test_three_permuted_copies_merge_back(kind, method, extra):
    """Three parents in zip mode: the copies of a unit form one merged unit (the third copies paired
    with each other: ZipIt! came back off by 2.3 logits). float32, so correlations tie only nearly."""
    model = tiny_model(kind, dtype=torch.float32, num_hidden_layers=3)
    copies = [permuted_copy(model, seed=s)[0] for s in (4, 5)]
    result = MuDSCMerger.from_pretrained([model, *copies], method, **extra).merge(batches(model), num_samples=48,
                                                                                 progress=False)
    x = tiny_inputs(model, seed=7)
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), outputs(model, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["vit-cls", "bert-seq"])
def test_weight_matching_recovers_the_planted_permutation_without_data(kind):
    model = tiny_model(kind)
    copy, perm = permuted_copy(model, seed=9)
    merger = MuDSCMerger.from_pretrained([model, copy], "weight-matching")
    result = merger.merge(progress=False)
    for name, t in result.transforms.items():
        assert torch.equal(t.assign[0], torch.arange(t.k)), name
        assert torch.equal(t.assign[1], invert(perm[name])), name

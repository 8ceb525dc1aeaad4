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


@pytest.mark.parametrize("kind", ["vit-cls", "bert-seq"])
@pytest.mark.parametrize("method,extra", DATA_PRESETS)
def test_permuted_copy_merges_back(kind, method, extra):
    model = tiny_model(kind)
    copy, _ = permuted_copy(model, seed=4)
    merger = MuDSCMerger.from_pretrained([model, copy], method, **extra)
    result = merger.merge(batches(model), num_samples=48, progress=False)
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

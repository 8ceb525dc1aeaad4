"""Transforms in float64: the merge weights ``1 / count`` must be exact to float64, not float32
(a cluster of 3 weighted 0.33333334 moves float64 weights by 1e-8 relative)."""
from __future__ import annotations

import torch

from conftest import tiny_model
from hf_mudsc import MuDSCMerger
from hf_mudsc.transforms import SpaceTransform
from test_apply import permuted_copy


def test_merge_of_a_cluster_of_three_is_exact_in_float64():
    t = SpaceTransform.identity([5, 5, 5])  # every merged unit has 3 members
    x = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    merged = sum(t.merge(x, i, 0) for i in range(3))
    torch.testing.assert_close(merged, x, rtol=1e-15, atol=0)
    m, _ = t.matrices(1)
    torch.testing.assert_close(m @ x, x / 3, rtol=1e-15, atol=0)


def test_three_float64_copies_of_one_model_merge_back_to_it_exactly():
    """Weight matching of a model with two permuted copies of itself: every merged unit averages
    3 equal values, so the merge is the model up to float64 rounding."""
    model = tiny_model("bert-seq")
    copies = [permuted_copy(model, seed=s)[0] for s in (3, 5)]
    result = MuDSCMerger.from_pretrained([model, *copies], "weight-matching").merge(progress=False)
    assert all(t.counts().eq(3).all() for t in result.transforms.values())
    state = dict(model.named_parameters())
    for name, merged in result.weights.task_state_dict(0).items():
        torch.testing.assert_close(merged, state[name].detach(), rtol=1e-14, atol=1e-15, msg=name)

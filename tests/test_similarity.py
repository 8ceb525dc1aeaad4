"""Weight similarity against a direct float64 computation with dense matrices (DESIGN §3.3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_model
from hf_mudsc.similarity import blend, weight_similarity
from hf_mudsc.transforms import SpaceTransform, Transforms
from hf_mudsc.unitmaps import UnitMap, unit_map_of


def zip_transforms(umap: UnitMap, seed: int) -> Transforms:
    """Model 0 onto itself; model 1 assigned at random (merged units with 0, 1 or more of its units)."""
    g = torch.Generator().manual_seed(seed)
    return {s.name: SpaceTransform((torch.arange(s.dim), torch.randint(0, s.dim, (s.dim,), generator=g)), s.dim)
            for s in umap.spaces}


def reference(space: str, umap: UnitMap, states: list[dict[str, torch.Tensor]], transforms: Transforms,
              aligned: set[str] | None = None) -> np.ndarray:
    """Per unit: every non-head member's slice (other axes multiplied by the dense pinv(U_i) of their
    space), features standardised across all models' units, then the Pearson correlation of units."""
    blocks = []
    for member in umap[space].members:
        if member.param in umap.task_heads:
            continue
        others = [(s, m) for s, m in umap.param_members()[member.param] if m.axis != member.axis]
        if aligned is not None and any(s.name not in aligned for s, _ in others):
            continue
        rows = []
        for i, state in enumerate(states):
            x = state[member.param].to(torch.float64)
            for s, m in others:
                u = transforms[s.name].matrices(i)[1]  # (d_i, k), 0/1
                x = torch.movedim(torch.tensordot(torch.linalg.pinv(u), x.movedim(m.axis, 0), dims=1), 0, m.axis)
            rows.append(x.movedim(member.axis, 0).reshape(x.shape[member.axis], -1).numpy())
        z = np.concatenate(rows)
        std = z.std(axis=0)
        blocks.append(np.where(std > 0, (z - z.mean(axis=0)) / np.where(std > 0, std, 1), 0.0))
    return np.corrcoef(np.concatenate(blocks, axis=1))


@pytest.mark.parametrize("kind", ["bert-seq", "vit-cls"])
@pytest.mark.parametrize("aligned", [None, {"residual"}])
def test_weight_similarity_equals_direct_computation(kind, aligned):
    models = [tiny_model(kind, seed=s, dtype=torch.float32) for s in (0, 1)]
    umap = unit_map_of(models[0])
    states = [{n: p.detach() for n, p in m.named_parameters()} for m in models]
    transforms = zip_transforms(umap, seed=4)
    for space in [s.name for s in umap.spaces]:
        got = weight_similarity(space, [umap, umap], states, transforms, aligned)
        want = reference(space, umap, states, transforms, aligned)
        assert got.shape == want.shape == (2 * umap[space].dim,) * 2
        # float32 Gram of O(1) standardised features: measured <= 1.5e-7
        assert np.abs(got - want).max() < 1e-5, space
        assert np.array_equal(got, got.T)


def test_blend_weights_the_two_terms():
    w, a = np.full((2, 2), 0.8), np.full((2, 2), 0.2)
    np.testing.assert_allclose(blend(0.25, w, a), 0.25 * 0.8 + 0.75 * 0.2)
    assert blend(1.0, w, a) is w and blend(0.0, w, a) is a
    assert blend(1.0, w, None) is w and blend(0.0, None, a) is a  # a term of weight 0 may be missing
    with pytest.raises(ValueError, match="weighs the weight similarity, but none was given"):
        blend(0.5, None, a)  # never silently the activations alone
    with pytest.raises(ValueError, match="weighs the activation similarity, but this space has no statistics"):
        blend(0.5, w, None)

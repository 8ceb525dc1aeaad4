"""Parents of different depths: linear CKA, the layer alignment, identity layers and the merge."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from conftest import outputs, tiny_inputs, tiny_model
from torch import nn

from hf_mudsc import MuDSCMerger
from hf_mudsc.hetero.cka import LayerCKA, align_layers, linear_cka
from hf_mudsc.hetero.depth import IdentityLayer, collect_layer_cka, layer_blocks, residual_writes
from hf_mudsc.loading import ParentError
from hf_mudsc.unitmaps import unit_map_of


def calibration(model, n=4, size=8):
    return [tiny_inputs(model, batch=size, seed=200 + i) for i in range(n)]


# ------------------------------------------------------------------------------- CKA
def test_cka_is_one_for_identical_inputs_and_invariant_to_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-10)
    y = torch.randn(500, 7, generator=g, dtype=torch.float64)
    assert linear_cka(x, torch.cat([x @ q, y], 1)) < 1.0
    assert linear_cka(x, y) == pytest.approx(linear_cka(2 * x @ q, 0.5 * y), abs=1e-12)


def test_cka_is_near_zero_for_independent_features():
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(20000, 8, generator=g, dtype=torch.float64) for _ in range(2))
    assert linear_cka(x, y) < 0.01


def test_cka_accumulated_over_batches_equals_one_batch():
    g = torch.Generator().manual_seed(2)
    a = [torch.randn(300, 6, generator=g, dtype=torch.float64) + 10 for _ in range(3)]
    b = [a[0] @ torch.randn(6, 5, generator=g, dtype=torch.float64) + torch.randn(300, 5, generator=g, dtype=torch.float64)
         for _ in range(2)]
    whole = LayerCKA([6] * 3, [5] * 2).update(a, b).matrix()
    acc = LayerCKA([6] * 3, [5] * 2)
    for rows in (slice(0, 7), slice(7, 150), slice(150, 300)):
        acc.update([t[rows] for t in a], [t[rows] for t in b])
    np.testing.assert_allclose(acc.matrix(), whole, atol=1e-12)
    assert whole[0, 0] > 0.5 and whole[2, 1] < 0.1


def test_padding_changes_nothing():
    """CKA over padded batches equals CKA over the same texts run one by one without padding."""
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1, num_hidden_layers=3)
    maps = [unit_map_of(a), unit_map_of(b)]
    padded = calibration(a, n=2)
    assert any((batch["attention_mask"] == 0).any() for batch in padded)
    single = []
    for batch in padded:
        for row in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][row].sum())
            single.append({k: v[row:row + 1, :n] for k, v in batch.items()})
    with_padding = collect_layer_cka([a, b], maps, padded, progress=False)
    without = collect_layer_cka([a, b], maps, single, progress=False)
    assert with_padding.shape == (2, 3)
    np.testing.assert_allclose(with_padding, without, atol=1e-9)


def _brute_force(score: np.ndarray) -> tuple[int, ...]:
    rows, cols = score.shape
    return max(itertools.combinations(range(cols), rows),
               key=lambda m: (sum(score[i, j] for i, j in enumerate(m)), tuple(-j for j in m)))


@pytest.mark.parametrize("seed", range(40))
def test_alignment_equals_brute_force_over_monotone_maps(seed):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 5))
    cols = int(rng.integers(rows, 8))
    score = rng.random((rows, cols)) if seed % 2 else rng.integers(0, 3, (rows, cols)).astype(float)  # ties too
    assert align_layers(score) == _brute_force(score)


# ------------------------------------------------------------------- identity layers
def with_layers(model: nn.Module, layers: list[nn.Module]) -> nn.Module:
    """A copy of a ViT/BERT classifier with its layer list replaced."""
    out = copy.deepcopy(model)
    owner = layer_blocks(unit_map_of(model))[0].rpartition(".")[0]
    holder, _, attr = owner.rpartition(".")
    setattr(out.get_submodule(holder), attr, nn.ModuleList(copy.deepcopy(layers)))
    out.config.num_hidden_layers = len(layers)
    return out


def zero_writes(model: nn.Module, layer: int) -> nn.Module:
    with torch.no_grad():
        for name in residual_writes(unit_map_of(model), layer):
            model.get_parameter(name).zero_()
    return model


def test_zeroed_residual_writes_make_a_pre_ln_layer_an_exact_identity():
    model = tiny_model("vit-cls", seed=3, num_hidden_layers=3)
    names = residual_writes(unit_map_of(model), 1)
    assert names == {f"vit.layers.1.{m}.{p}" for m in ("attention.o_proj", "mlp.fc2") for p in ("weight", "bias")}
    zeroed = zero_writes(copy.deepcopy(model), 1)
    skipped = with_layers(model, [model.vit.layers[0], IdentityLayer(), model.vit.layers[2]])
    x = tiny_inputs(model)
    torch.testing.assert_close(outputs(zeroed, x), outputs(skipped, x), rtol=0, atol=1e-12)
    assert not torch.allclose(outputs(model, x), outputs(zeroed, x))


def deep_with_identities(original: nn.Module) -> nn.Module:
    """The 2-layer ``original`` with layers of zeroed writes inserted after each of its layers:
    its real layers are deep layers 0 and 2."""
    layers = original.vit.layers
    filler = [tiny_model("vit-cls", seed=9 + i).vit.layers[0] for i in range(2)]
    deep = with_layers(original, [layers[0], filler[0], layers[1], filler[1]])
    for layer in (1, 3):
        zero_writes(deep, layer)
    return deep


def test_alignment_finds_the_real_layers():
    original = tiny_model("vit-cls", seed=4)
    deep = deep_with_identities(original)
    merger = MuDSCMerger.from_pretrained([deep, original], "activation-matching")
    merger.collect(calibration(original), progress=False)
    assert merger.depth.layer_map == (0, 2)  # layer 1 (3) copies layer 0 (2): ties go to the earliest
    assert merger.depth.deep == 0 and merger.depth.unpaired == [1, 3]
    np.testing.assert_allclose(merger.depth.cka[[0, 1], [0, 2]], 1.0, atol=1e-9)


@pytest.mark.parametrize("method", ["activation-matching", "zipit", "average"])
@pytest.mark.parametrize("unpaired", ["keep", "average"])
def test_merging_with_identity_layers_reproduces_the_original(method, unpaired):
    original = tiny_model("vit-cls", seed=4)
    deep = deep_with_identities(original)
    merger = MuDSCMerger.from_pretrained([deep, original], method, unpaired_layers=unpaired)
    merger.align(layer_map=[0, 2])
    result = merger.merge(calibration(original), progress=False)
    x = tiny_inputs(original)
    assert result.task_models[1].config.num_hidden_layers == 4
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), outputs(original, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["mudsc", "average"])
@pytest.mark.parametrize("unpaired", ["keep", "average"])
def test_merging_with_identity_layers_and_every_repair_reproduces_the_original(method, unpaired):
    original = tiny_model("vit-cls", seed=4)
    merger = MuDSCMerger.from_pretrained([deep_with_identities(original), original], method,
                                         unpaired_layers=unpaired, repair="stats,lsq,heads")
    merger.align(layer_map=[0, 2])
    result = merger.merge(calibration(original), progress=False)
    assert [r["repair"] for r in result.repairs] == ["stats", "lsq", "heads"]
    x = tiny_inputs(original)
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), outputs(original, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("unpaired", ["keep", "average"])
def test_repairs_fit_an_unpaired_layer_to_the_deep_parent_weighted_as_merged(unpaired):
    """A model averaged with itself less layer 1: the repairs leave layer 0 and the attention output
    of layer 1 (kept whole, or its writes halved by the merge) as merged, since their targets
    come from the deep parent alone, weighted as the merge weighted their weights."""
    deep = tiny_model("vit-cls", seed=5, num_hidden_layers=3)
    shallow = with_layers(deep, [deep.vit.layers[0], deep.vit.layers[2]])
    weights = {}
    for repair in ("none", "stats,lsq,heads"):
        merger = MuDSCMerger.from_pretrained([deep, shallow], "average", unpaired_layers=unpaired, repair=repair)
        merger.align(layer_map=[0, 2])
        weights[repair] = merger.merge(calibration(deep), progress=False).weights.shared
    names = [n for n in weights["none"] if n.startswith(("vit.layers.0.", "vit.layers.1.attention.o_proj."))]
    for name in names:
        torch.testing.assert_close(weights["stats,lsq,heads"][name], weights["none"][name], rtol=0, atol=1e-6)
    o_proj = weights["none"]["vit.layers.1.attention.o_proj.weight"]
    scale = 1.0 if unpaired == "keep" else 0.5
    torch.testing.assert_close(o_proj, scale * deep.vit.layers[1].attention.o_proj.weight.detach(), rtol=0, atol=1e-12)
    changed = weights["stats,lsq,heads"]["vit.layers.2.mlp.fc1.weight"] - weights["none"]["vit.layers.2.mlp.fc1.weight"]
    assert changed.abs().max() > 1e-4  # the paired layer 2 is repaired (the parents differ there)


def test_a_deep_layer_without_partner_is_kept_whole_or_its_writes_averaged():
    """Plain averaging of a model with itself less one layer: 'keep' gives the deep model, 'average'
    the deep model with that layer's residual writes halved."""
    for kind in ("vit-cls", "bert-seq"):
        deep = tiny_model(kind, seed=5, num_hidden_layers=3)
        owner = layer_blocks(unit_map_of(deep))[0].rpartition(".")[0]
        layers = deep.get_submodule(owner)
        shallow = with_layers(deep, [layers[0], layers[2]])
        x = tiny_inputs(deep)
        keep = MuDSCMerger.from_pretrained([deep, shallow], "average")
        keep.align(layer_map=[0, 2])
        for task in keep.merge().task_models:
            torch.testing.assert_close(outputs(task, x), outputs(deep, x), rtol=0, atol=1e-10)
    halved = copy.deepcopy(deep := tiny_model("vit-cls", seed=5, num_hidden_layers=3))
    with torch.no_grad():
        for name in residual_writes(unit_map_of(deep), 1):
            halved.get_parameter(name).mul_(0.5)
    merger = MuDSCMerger.from_pretrained([with_layers(deep, [deep.vit.layers[0], deep.vit.layers[2]]), deep],
                                         "average", unpaired_layers="average")
    merger.align(layer_map=[0, 2])
    result = merger.merge()
    assert merger.depth.deep == 1
    torch.testing.assert_close(outputs(result.task_models[1], tiny_inputs(deep)), outputs(halved, tiny_inputs(deep)),
                               rtol=0, atol=1e-10)


def test_partial_merge_counts_deep_layers_and_keeps_the_shallow_parent_whole():
    original = tiny_model("vit-cls", seed=4)
    deep = deep_with_identities(original)
    merger = MuDSCMerger.from_pretrained([deep, original], "activation-matching", merge_layers=1)
    merger.align(layer_map=[0, 2])
    result = merger.merge(calibration(original), progress=False)
    assert "vit.layers.3.mlp.fc2.weight" in result.weights.private[1]  # its own identity layer
    x = tiny_inputs(original)
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), outputs(original, x), rtol=0, atol=1e-5)


def test_post_ln_parents_refuse_what_has_no_identity_layer():
    deep, shallow = tiny_model("bert-seq", seed=0, num_hidden_layers=3), tiny_model("bert-seq", seed=1)
    merger = MuDSCMerger.from_pretrained([deep, shallow], "zipit", unpaired_layers="average")
    with pytest.raises(ParentError, match="post-LN: use unpaired_layers='keep'"):
        merger.merge(calibration(shallow), progress=False)
    merger = MuDSCMerger.from_pretrained([deep, shallow], "zipit", merge_layers=1)
    with pytest.raises(ParentError, match="merge_layers >= "):
        merger.align(layer_map=[0, 1])


def test_aligning_again_keeps_the_statistics_of_the_same_alignment_and_says_when_it_drops_them():
    deep, shallow = tiny_model("vit-cls", seed=0, num_hidden_layers=3), tiny_model("vit-cls", seed=1)
    merger = MuDSCMerger.from_pretrained([deep, shallow], "zipit")
    merger.collect(calibration(shallow), progress=False)
    found = list(merger.depth.layer_map)
    expected = merger.merge(progress=False)
    merger.align(layer_map=found)  # the map it has: nothing to collect again (was dropped silently)
    again = merger.merge(progress=False)
    assert again.recipe()["layer_alignment"] == expected.recipe()["layer_alignment"]
    assert all(torch.equal(again.transforms[n].assign[i], t.assign[i])
               for n, t in expected.transforms.items() for i in range(2))
    other = [0, 1] if found != [0, 1] else [1, 2]
    with pytest.warns(UserWarning, match="changed the layer alignment .* pass the calibration data again"):
        merger.align(layer_map=other)
    with pytest.raises(ValueError, match="needs calibration data"):
        merger.merge(progress=False)
    assert merger.merge(calibration(shallow), progress=False).recipe()["layer_alignment"]["layer_map"] == other


def test_data_free_merges_of_different_depths_need_an_alignment():
    deep, shallow = tiny_model("vit-cls", seed=0, num_hidden_layers=3), tiny_model("vit-cls", seed=1)
    merger = MuDSCMerger.from_pretrained([deep, shallow], "weight-matching")
    with pytest.raises(ValueError, match="align\\(layer_map=...\\)"):
        merger.merge()
    merger.align(layer_map=[0, 2])
    result = merger.merge(progress=False)
    assert result.recipe()["layer_alignment"]["layer_map"] == [0, 2]
    assert [tuple(outputs(t, tiny_inputs(deep)).shape) for t in result.task_models] == [(4, 3), (4, 3)]

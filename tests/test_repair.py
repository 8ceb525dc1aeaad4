"""Closed-form repairs after alignment (hf_mudsc.repair): identity on exact merges, targets hit,
the ridge solve, head refits, partial merges, three parents, the recipe and the config."""
from __future__ import annotations

import importlib
import json
import re
import shutil
import tempfile

import numpy as np
import pytest
import torch

from conftest import outputs, tiny_inputs, tiny_model
from hf_mudsc import MergeConfig, MuDSCMerger, reapply
from hf_mudsc.apply import apply_transforms, build_task_model
from hf_mudsc.config import ConfigError
from hf_mudsc.repair import apply_repairs
from hf_mudsc.repair.ridge import LAMBDA_SCALE, RidgeSums
from hf_mudsc.transforms import SpaceTransform, invert
from hf_mudsc.unitmaps import unit_map_of
from test_apply import params, permuted_copy

ALL = ("stats", "lsq", "heads")
pytestmark = pytest.mark.filterwarnings("ignore::hf_mudsc.MergeQualityWarning")


def calibration(model, n=6, size=8):
    return [tiny_inputs(model, batch=size, seed=300 + i) for i in range(n)]


def copies_with_transforms(model, count: int, zip_order: int | None = None):
    """``model`` and ``count`` permuted copies, with the transforms that merge them all back onto
    one frame (model 0 identity; ``zip_order``: the merged units in a random head-respecting order)."""
    from hf_mudsc.transforms import random_permutation

    umap = unit_map_of(model)
    copies, perms = zip(*(permuted_copy(model, seed=10 + j) for j in range(count)))
    order = None if zip_order is None else random_permutation(umap, zip_order)
    transforms = {}
    for s in umap.spaces:
        sigma = torch.arange(s.dim) if order is None else order[s.name].assign[0]
        transforms[s.name] = SpaceTransform((sigma, *(sigma[invert(p[s.name])] for p in perms)), s.dim)
    return [model, *copies], transforms


def merged(models, transforms, repair, calib, **config):
    merger = MuDSCMerger.from_pretrained(models, "mudsc", repair=repair, **config)
    merger.collect(calib, num_samples=10_000, progress=False)
    return merger.apply(transforms)


def hidden(model, x):
    """What a base model's merged copy must reproduce (its pooled output, or for ViT its last hidden state)."""
    with torch.no_grad():
        out = model(**x)
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state


# ---------------------------------------------------------------------------- identity on exact merges


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["bert-seq", "vit-cls"])
def test_half_precision_parents_are_repaired_in_float32(kind, dtype):
    """A self-merge of half-precision parents keeps their weights: the repairs fit on float32 copies
    (fitted on the parents' own half-precision outputs, they chased their rounding: a bf16 pooler bias
    moved by 24%)."""
    model = tiny_model(kind, dtype=torch.float32).to(dtype)
    result = MuDSCMerger.from_pretrained([model, model], "mudsc", repair=ALL).merge(
        [{k: v.to(dtype) if v.is_floating_point() else v for k, v in b.items()} for b in calibration(model)],
        num_samples=48, progress=False)
    for task in result.task_models:
        assert task.dtype == dtype
        for name, param in model.named_parameters():
            ulp = torch.finfo(dtype).eps * float(param.detach().float().abs().max())
            assert float((task.get_parameter(name).detach().float() - param.detach().float()).abs().max()) <= ulp, name


@pytest.mark.parametrize("kind", ["bert-seq", "roberta-seq", "vit-cls", "bert-base", "distilbert-seq", "electra-small"])
def test_every_repair_keeps_a_self_merge_exact(kind):
    model = tiny_model(kind)
    x = tiny_inputs(model, seed=99)
    calib = calibration(model)
    result = MuDSCMerger.from_pretrained([model, model], "mudsc", repair=ALL).merge(calib, num_samples=48, progress=False)
    assert [r["repair"] for r in result.repairs] == list(ALL)
    for task in result.task_models:
        if kind.endswith("-base"):
            torch.testing.assert_close(hidden(task, x), hidden(model, x), atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(outputs(task, x), outputs(model, x), atol=1e-5, rtol=0)
    heads = result.repairs[-1]
    if kind.endswith("-base"):
        assert heads["maps"] == 0 and "no task heads" in heads["note"]
    else:
        assert heads["maps"] >= 2


@pytest.mark.parametrize("kind,method", [("bert-seq", "mudsc"), ("vit-cls", "mudsc"), ("bert-seq", "auto")])
def test_parents_in_train_mode_are_run_without_dropout_and_left_in_train_mode(kind, method):
    """Parents switched to train mode after loading (a Trainer does so) give their targets and the
    automatic choice's reference outputs without dropout: a self-merge with dropout 0.3 stays
    exact (the repairs fitted dropped-out targets: off by several logits), and their mode is theirs again."""
    model = tiny_model(kind, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    x = tiny_inputs(model, seed=99)
    expected = outputs(model, x)
    merger = MuDSCMerger.from_pretrained([model, model], method)
    model.train()
    result = merger.merge(calibration(model), num_samples=48, progress=False)
    assert model.training and all(m.training for m in model.modules())
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,zip_order", [("bert-seq", None), ("bert-seq", 11), ("vit-cls", 11), ("bert-token", None),
                                            ("distilbert-seq", 11), ("electra-small", 11)])
def test_every_repair_keeps_a_merge_with_a_permuted_copy_exact(kind, zip_order):
    model = tiny_model(kind)
    x = tiny_inputs(model, seed=99)
    models, transforms = copies_with_transforms(model, 1, zip_order)
    result = merged(models, transforms, ALL, calibration(model))
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), outputs(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["bert-seq", "vit-cls"])
def test_partial_merge_of_three_parents_stays_exact_and_keeps_private_layers(kind):
    model = tiny_model(kind)
    x = tiny_inputs(model, seed=99)
    models, transforms = copies_with_transforms(model, 2, zip_order=5)
    result = merged(models, transforms, ALL, calibration(model), merge_layers=1)
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), outputs(model, x), atol=1e-5, rtol=0)
    assert all(r["maps"] > 0 for r in result.repairs)


def test_partial_merge_repairs_only_shared_layers_and_every_head():
    a, b, c = (tiny_model("bert-seq", seed=s) for s in range(3))
    calib = calibration(a)
    merger = MuDSCMerger.from_pretrained([a, b, c], "mudsc", merge_layers=1)
    merger.collect(calib, num_samples=48, progress=False)
    transforms, _ = merger.solve(progress=False)
    plain = merger.apply(transforms, merger.config.with_updates(repair="none"))
    fixed = merger.apply(transforms, merger.config.with_updates(repair=ALL))
    for i in range(3):  # private trunk layers are untouched; every head is refit
        for name, tensor in plain.weights.private[i].items():
            if name.startswith("classifier."):
                assert not torch.equal(fixed.weights.private[i][name], tensor), name
            else:
                assert torch.equal(fixed.weights.private[i][name], tensor), name
    changed = [n for n, t in plain.weights.shared.items() if not torch.equal(fixed.weights.shared[n], t)]
    assert any("layer.0." in n for n in changed) and not any("layer.1." in n for n in changed)


# ---------------------------------------------------------------------------- what each repair achieves


def _unit_stats(model, module_names, calib):
    """Per-module mean and std over the real tokens of the calibration batches (numpy, float64)."""
    seen = {m: [] for m in module_names}
    handles = [model.get_submodule(m).register_forward_hook(lambda mod, i, o, m=m: seen[m].append(o.detach()))
               for m in module_names]
    rows = {m: [] for m in module_names}
    with torch.no_grad():
        for batch in calib:
            for m in module_names:
                seen[m].clear()
            model(**batch)
            mask = batch.get("attention_mask")
            for m in module_names:
                out = seen[m][0]
                rows[m].append(out[mask.bool()] if mask is not None else out.reshape(-1, out.shape[-1]))
    for h in handles:
        h.remove()
    return {m: (torch.cat(r).mean(0), torch.cat(r).std(0, unbiased=False)) for m, r in rows.items()}


@pytest.mark.parametrize("kind,modules,config", [
    ("bert-seq", ("bert.encoder.layer.{i}.attention.output.dense", "bert.encoder.layer.{i}.intermediate.dense"),
     {"method": "zipit", "zip_budget": 0.5, "zip_decay": 0.5}),
    ("vit-cls", ("vit.layers.{i}.attention.o_proj", "vit.layers.{i}.mlp.fc1"), {"method": "mudsc"}),
])
def test_stats_repair_hits_the_merge_weighted_parent_statistics(kind, modules, config):
    a, b = tiny_model(kind, seed=0), tiny_model(kind, seed=1)
    calib = calibration(a)
    merger = MuDSCMerger.from_pretrained([a, b], repair=("stats",), **config)
    result = merger.merge(calib, num_samples=48, progress=False)
    names = [m.format(i=i) for i in range(2) for m in modules]
    parents = [_unit_stats(p, names, calib) for p in (a, b)]
    got = _unit_stats(result.task_models[0], names, calib)
    for m in names:
        layer = re.search(r"\.(\d+)\.", m)[1]
        space = "residual" if m.endswith(("output.dense", "o_proj")) else f"layer.{layer}.ffn"
        t = result.transforms[space]
        for k in range(2):  # mean, std
            want = sum(t.merge(s[m][k], i, 0) for i, s in enumerate(parents))
            torch.testing.assert_close(got[m][k], want, atol=1e-6, rtol=0, msg=f"{m} {'mean std'.split()[k]}")
    before = _unit_stats(merger.apply(result.transforms, merger.config.with_updates(repair=())).task_models[0], names, calib)
    assert any((before[m][1] - got[m][1]).abs().max() > 1e-2 for m in names)  # the repair did change something


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block,cholesky", [(512, True), (2, True), (4, True), (4, False)])
def test_ridge_sums_equal_a_direct_numpy_solve(bias, block, cholesky, monkeypatch):
    """The streamed sums (the Gram as its upper block rows, ``block`` wide: one block, blocks that
    split the bias column off or not) give the closed-form ridge solution, by Cholesky of the upper
    triangle or, where that fails, by a general solve of the whole matrix."""
    monkeypatch.setattr("hf_mudsc.repair.ridge.GRAM_BLOCK", block)
    if not cholesky:
        monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a, upper: (a, torch.tensor(1)))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 3))
    w0, b0 = rng.normal(size=(3, 6)), rng.normal(size=3)
    sums = RidgeSums(bias)
    for chunk in np.array_split(np.arange(50), 3):  # streamed
        sums.update(torch.from_numpy(x[chunk]), torch.from_numpy(y[chunk]))
    w, b = sums.solve(torch.from_numpy(w0), torch.from_numpy(b0) if bias else None)
    xt = np.hstack([x, np.ones((50, 1))]) if bias else x
    current = np.vstack([w0.T, b0]) if bias else w0.T
    gram = xt.T @ xt
    lam = LAMBDA_SCALE * np.mean(np.diag(gram))
    direct = np.linalg.solve(gram + lam * np.eye(len(gram)), xt.T @ y + lam * current)
    np.testing.assert_allclose(w.numpy(), direct[:6].T, atol=1e-12)
    if bias:
        np.testing.assert_allclose(b.numpy(), direct[6], atol=1e-12)
    else:
        assert b is None


@pytest.mark.parametrize("kind", ["bert-seq", "vit-cls"])
def test_head_refit_recovers_the_head_on_an_unchanged_trunk(kind):
    """Trunk = the parent's, head damaged: the refit is the ridge solution pulled towards the damaged head
    (checked in closed form on independently taken features), and it recovers the parent's head: exactly
    when the head is intact, and up to the pull (1e-3 of the Gram) when damaged."""
    model = tiny_model(kind)
    umap = unit_map_of(model)
    calib = calibration(model, n=8)
    exact = apply_transforms([umap], [params(model)], {s.name: SpaceTransform.identity([s.dim]) for s in umap.spaces})
    damaged = apply_transforms([umap], [params(model)], {s.name: SpaceTransform.identity([s.dim]) for s in umap.spaces})
    g = torch.Generator().manual_seed(0)
    for name in ("classifier.weight", "classifier.bias"):
        damaged.private[0][name] = damaged.private[0][name] + torch.randn(damaged.private[0][name].shape, generator=g,
                                                                          dtype=torch.float64)
    bad_w, bad_b = damaged.private[0]["classifier.weight"].clone(), damaged.private[0]["classifier.bias"].clone()
    identity = {s.name: SpaceTransform.identity([s.dim]) for s in umap.spaces}
    for weights in (exact, damaged):
        rows = apply_repairs(("heads",), [model], [umap], identity, weights, calib)
        assert rows[0]["maps"] == 1
    w, b = model.classifier.weight.detach(), model.classifier.bias.detach()
    torch.testing.assert_close(exact.private[0]["classifier.weight"], w, atol=1e-9, rtol=0)
    torch.testing.assert_close(exact.private[0]["classifier.bias"], b, atol=1e-9, rtol=0)
    with torch.no_grad():  # the classifier's inputs, taken without hooks
        base = [model.base_model(**batch) for batch in calib]
    feats = torch.cat([o.pooler_output if kind == "bert-seq" else o.last_hidden_state[:, 0] for o in base]).numpy()
    xt = np.hstack([feats, np.ones((len(feats), 1))])
    gram = xt.T @ xt
    lam = LAMBDA_SCALE * np.mean(np.diag(gram))
    target = xt @ np.vstack([w.numpy().T, b.numpy()])
    direct = np.linalg.solve(gram + lam * np.eye(len(gram)), xt.T @ target + lam * np.vstack([bad_w.numpy().T, bad_b.numpy()]))
    np.testing.assert_allclose(damaged.private[0]["classifier.weight"].numpy(), direct[:-1].T, atol=1e-8)
    np.testing.assert_allclose(damaged.private[0]["classifier.bias"].numpy(), direct[-1], atol=1e-8)
    x = tiny_inputs(model, seed=99)
    refit = outputs(build_task_model(model, damaged.task_state_dict(0)), x)
    broken = outputs(build_task_model(model, {**damaged.task_state_dict(0), "classifier.weight": bad_w,
                                               "classifier.bias": bad_b}), x)
    assert (refit - outputs(model, x)).abs().max() < 0.05 * (broken - outputs(model, x)).abs().max()


@pytest.mark.parametrize("repair", ["lsq", "heads"])
def test_least_squares_repairs_bring_the_merge_closer_to_its_parents(repair):
    """A ridge refit never fits the calibration targets worse than the map it starts from: with
    ``heads`` alone, each task's logits on the calibration data get closer to its parent's."""
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    calib = calibration(a)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc")
    merger.collect(calib, num_samples=48, progress=False)
    transforms, _ = merger.solve(progress=False)
    plain = merger.apply(transforms, merger.config.with_updates(repair="none"))
    fixed = merger.apply(transforms, merger.config.with_updates(repair=(repair,)))

    def gap(task, parent):
        return sum(float(((outputs(task, x) - outputs(parent, x)) ** 2).sum()) for x in calib)

    gaps = [(gap(p, q), gap(f, q)) for p, f, q in zip(plain.task_models, fixed.task_models, (a, b))]
    if repair == "heads":
        assert all(after < before for before, after in gaps), gaps
    else:  # layer by layer towards the averaged parents: the logits need not improve, but they must change
        assert all(after != before for before, after in gaps)


# ---------------------------------------------------------------------------- config, data, recipe


def test_repair_config_is_validated_normalised_and_saved():
    # the product's default (mudsc) repairs; the published presets repair nothing unless asked
    assert MergeConfig().repair is None and MergeConfig().resolved_repair == ("stats", "lsq", "heads")
    assert all(MergeConfig(method=m).resolved_repair == () for m in ("zipit", "average", "weight-matching"))
    assert MergeConfig(repair="none").resolved_repair == () == MergeConfig(repair=[]).resolved_repair
    assert MergeConfig(repair=("none",)).resolved_repair == ()  # `--repair none` on the command line
    assert MergeConfig.from_dict(MergeConfig().to_dict()) == MergeConfig()
    assert MergeConfig.from_dict({"method": "mudsc"}).resolved_repair == ()  # a recipe saved before repairs
    assert MergeConfig(repair=["heads", "stats", "heads"]).repair == ("stats", "heads")
    assert MergeConfig(repair="heads, lsq").repair == ("lsq", "heads")
    config = MergeConfig(method="zipit", repair=("heads", "lsq"))
    data = config.to_dict()
    assert data["repair"] == ["lsq", "heads"] and json.loads(json.dumps(data)) == data
    assert MergeConfig.from_dict(data) == config
    with pytest.raises(ConfigError, match="unknown repair 'bn'; choose from: stats, lsq, heads"):
        MergeConfig(repair=("heads", "bn"))
    with pytest.raises(ConfigError, match="repair must be"):
        MergeConfig(repair=3)


def test_repairs_need_calibration_data():
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "weight-matching", repair=("heads",))
    with pytest.raises(ValueError, match="repair heads needs calibration data"):
        merger.merge(progress=False)
    transforms, _ = merger.solve(progress=False)
    with pytest.raises(ValueError, match="needs calibration data"):
        merger.apply(transforms)
    result = merger.merge(calibration(a), num_samples=48, progress=False)  # data-free solve, repair on data
    assert result.calibration["num_samples"] == 48 and result.repairs[0]["repair"] == "heads"


def test_repairs_run_on_the_first_repair_samples():
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    calib = calibration(a)  # 6 batches of 8 samples
    first_20 = [*calib[:2], {k: v[:4] for k, v in calib[2].items()}]

    def repaired(data, num_samples, **config):
        merger = MuDSCMerger.from_pretrained([a, b], "weight-matching", repair=ALL, **config)  # a data-free solve
        return merger.merge(data, num_samples=num_samples, progress=False)

    capped = repaired(calib, 48, repair_samples=20)
    assert [r["samples"] for r in capped.repairs] == [20, 20, 20]
    alone = repaired(first_20, 20)  # the same repairs given only those samples
    every = repaired(calib, 48, repair_samples=None)
    assert [r["samples"] for r in every.repairs] == [48, 48, 48]
    cap_above = repaired(calib, 48, repair_samples=1000)
    differs = False
    for name, value in capped.weights.shared.items():
        torch.testing.assert_close(value, alone.weights.shared[name], atol=0, rtol=0)
        torch.testing.assert_close(cap_above.weights.shared[name], every.weights.shared[name], atol=0, rtol=0)
        differs |= not torch.allclose(value, every.weights.shared[name], atol=1e-4, rtol=0)
    assert differs  # 20 samples are not 48: the cap took effect


def test_repairs_take_their_own_token_cap_not_the_statistics_one():
    """The repairs fit each map on ``repair_tokens_per_batch`` tokens per batch, whatever the
    statistics' ``max_tokens_per_batch``; a recipe saved before the field existed reads as the cap
    its repairs took, the statistics' one."""
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    calib = calibration(a)  # 6 batches of 8 samples, 43 real tokens each

    def repaired(**config):  # a data-free solve: the transforms do not depend on any cap
        merger = MuDSCMerger.from_pretrained([a, b], "weight-matching", repair=ALL, **config)
        return merger.merge(calib, num_samples=48, progress=False).weights.shared

    capped = repaired(repair_tokens_per_batch=5, max_tokens_per_batch=None)
    same = repaired(repair_tokens_per_batch=5, max_tokens_per_batch=3)
    every = repaired(repair_tokens_per_batch=None, max_tokens_per_batch=5)
    above = repaired(repair_tokens_per_batch=1000, max_tokens_per_batch=5)  # a cap above the batch: every token
    differs = False
    for name, value in capped.items():
        torch.testing.assert_close(same[name], value, atol=0, rtol=0)
        torch.testing.assert_close(above[name], every[name], atol=0, rtol=0)
        differs |= not torch.allclose(value, every[name], atol=1e-4, rtol=0)
    assert differs  # 5 tokens of 43 are not all of them: the cap took effect
    assert MergeConfig().repair_tokens_per_batch == 256
    saved = MergeConfig(repair_tokens_per_batch=32).to_dict()
    assert MergeConfig.from_dict(saved).repair_tokens_per_batch == 32
    for statistics_cap in (64, None):
        old = {**saved, "max_tokens_per_batch": statistics_cap}
        del old["repair_tokens_per_batch"]
        assert MergeConfig.from_dict(old).repair_tokens_per_batch == statistics_cap
    del old["max_tokens_per_batch"]
    assert MergeConfig.from_dict(old).repair_tokens_per_batch == 256  # the field's default of that time


@pytest.mark.parametrize("name,default", [("repair_samples", None), ("statistics_samples", 512)])
def test_sample_caps_are_validated_and_round_trip(name, default):
    for bad in (0, -3, 1.5, True, "256"):
        with pytest.raises(ConfigError, match=f"{name} must be a positive integer or None"):
            MergeConfig(**{name: bad})
    assert getattr(MergeConfig(), name) == default
    assert getattr(MergeConfig.from_dict(MergeConfig(**{name: 64}).to_dict()), name) == 64
    old = {k: v for k, v in MergeConfig().to_dict().items() if k != name}  # a recipe from before: no cap
    assert getattr(MergeConfig.from_dict(old), name) is None


def test_saved_folder_records_the_repairs_and_reapply_refuses(tmp_path):
    from parents_on_disk import image_dataset, vit_parents

    paths = vit_parents(tmp_path)
    merger = MuDSCMerger.from_pretrained([str(p) for p in paths], "average", repair=("heads", "stats"))
    out = merger.merge(image_dataset(32), num_samples=32, batch_size=8, progress=False).save_pretrained(tmp_path / "merged")
    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert recipe["config"]["repair"] == ["stats", "heads"]
    assert [r["repair"] for r in recipe["repairs"]] == ["stats", "heads"]
    card = (out / "README.md").read_text()
    assert "## Repair after alignment" in card and "not part of the published methods" in card
    with pytest.raises(ValueError, match="reapply cannot repeat"):
        reapply(out)


def test_output_moments_from_ridge_sums_equal_the_outputs_measured(monkeypatch):
    """``stats`` reads a re-solved map's output moments from its ridge sums instead of running the
    map: they equal those of the outputs themselves (float64; inputs with offsets 100x their spread,
    where a raw second moment would cancel)."""
    from hf_mudsc.repair.norm_stats import UnitMoments

    rng = np.random.default_rng(0)
    x = torch.from_numpy(50.0 + 0.5 * rng.normal(size=(300, 8)) * rng.uniform(0.1, 2, size=8))
    w, b = torch.from_numpy(rng.normal(size=(5, 8))), torch.from_numpy(rng.normal(size=5))
    monkeypatch.setattr("hf_mudsc.repair.ridge.GRAM_BLOCK", 3)  # the bias column in a block of its own
    sums, measured = RidgeSums(bias=True), UnitMoments()
    for chunk in torch.tensor_split(x, 4):  # streamed
        sums.update(chunk, torch.zeros(len(chunk), 5, dtype=torch.float64))
        measured.update(chunk @ w.T + b)
    for got, want in zip(sums.output_moments(w, b), measured.mean_std()):
        torch.testing.assert_close(got, want, atol=0, rtol=1e-9)
    with pytest.raises(ValueError, match="bias column"):
        RidgeSums(bias=False).output_moments(w, b)


# ---------------------------------------------------------------------------- the walk's layer runs


@pytest.mark.parametrize("kind", ["bert-seq", "vit-cls"])
def test_kept_submodule_outputs_equal_full_layer_runs_while_maps_change_in_forward_order(kind):
    """The merged model's layer runs reuse the outputs of submodules that finished before the
    observed maps (LayerInputs(reuse=True)): the rows and the layer outputs are the same bits as
    running every submodule, while each group of maps is changed after it is observed."""
    ctx, model = _merged_context(kind)
    generator = torch.Generator().manual_seed(0)

    def correct(group):  # a correction of the group, as the repairs make
        for m in group:
            module = model.get_submodule(m)
            noise = 0.1 * torch.randn(module.weight.shape, generator=generator)
            ctx.set_linear(m, module.weight + noise, module.bias)

    fast, kept, _ = _walk_kept_and_full(ctx, model, correct)
    # the attention block, then the FFN's first map (4x the hidden states, no larger than the
    # layer's widest linear output) were reused; not ViT's activation, which saves no product
    ffn = {"bert-seq": "intermediate", "vit-cls": "mlp.fc1"}[kind]
    assert {"attention", ffn} <= kept
    assert "mlp.activation_fn" not in kept
    assert len(fast._calls) == 1  # the layers are built alike: one observed call order served them all


@pytest.mark.parametrize("spill", [True, False])
def test_kept_outputs_changed_in_place_by_the_layer_are_dropped(monkeypatch, spill):
    """Kept submodule outputs stand in as they are, not as copies: where the layer changes one in
    place (here BERT's FFN output block negates both its inputs and undoes it on copies, so the
    layer computes the same), the change is seen by the tensors' version counters and the output is
    dropped (the attention block's at its first replay), so the rows and the layer outputs stay the
    same bits as running every submodule. The FFN's activations, wider than the layer's input, are
    spilled to a file: the copy read back for each run is what the module returned, so they stay
    kept; where the file cannot be written (``spill=False``) they are held and dropped at once."""
    from transformers.models.bert.modeling_bert import BertOutput

    forward = BertOutput.forward

    def negating(self, hidden_states, input_tensor):
        hidden_states.neg_(), input_tensor.neg_()
        return forward(self, -hidden_states, -input_tensor)

    ctx, model = _merged_context("bert-seq")
    monkeypatch.setattr(BertOutput, "forward", negating)
    if not spill:
        monkeypatch.setattr("hf_mudsc.spill.Spill.put", lambda self, key, tensor: False)
    fast, kept, at_ends = _walk_kept_and_full(ctx, model)
    assert "attention" in kept and ("intermediate" in kept) == spill
    assert not any("attention" in names for names in at_ends)  # dropped at its first replay
    assert bool(fast._spill._where) == spill


@pytest.mark.parametrize("kind", ["bert-seq", "vit-cls"])
def test_repairs_with_activations_spilled_are_the_same_bits_as_held_in_memory(monkeypatch, kind):
    """During the repairs the parents' hidden states and the merged model's FFN activations wait in a
    file (:class:`hf_mudsc.spill.Spill`); the repaired weights are the same bits as with every tensor
    held in memory (a spill that refuses them all, as on a full disk or a device)."""
    from hf_mudsc.spill import Spill

    a, b = tiny_model(kind, seed=0), tiny_model(kind, seed=1)
    put, written = Spill.put, []
    monkeypatch.setattr(Spill, "put", lambda self, key, t: put(self, key, t) and (written.append(key) or True))
    spilled = MuDSCMerger.from_pretrained([a, b], "mudsc").merge(calibration(a, n=3), num_samples=24, progress=False)
    assert {k[0] for k in written if isinstance(k[0], str)} >= {"state", {"bert-seq": "intermediate",
                                                                           "vit-cls": "mlp.fc1"}[kind]}
    monkeypatch.setattr(Spill, "put", lambda self, key, t: False)
    held = MuDSCMerger.from_pretrained([a, b], "mudsc").merge(calibration(a, n=3), num_samples=24, progress=False)
    assert [r["repair"] for r in spilled.repairs] == ["stats", "lsq", "heads"]
    for name, t in held.weights.shared.items():
        assert torch.equal(spilled.weights.shared[name], t), name
    for i, private in enumerate(held.weights.private):
        for name, t in private.items():
            assert torch.equal(spilled.weights.private[i][name], t), name


def _merged_context(kind: str):
    """The repair context of a merge of two tiny parents (no repair) and its first task model."""
    from hf_mudsc.repair.context import RepairContext

    a, b = tiny_model(kind, seed=0), tiny_model(kind, seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", repair="none")
    result = merger.merge(calibration(a, n=3), num_samples=24, progress=False)
    ctx = RepairContext([a, b], merger.unit_maps, result.transforms, result.weights, calibration(a, n=3))
    return ctx, ctx.task_model(0)


def _walk_kept_and_full(ctx, model, correct=None):
    """Walk ``model`` group by group and layer by layer twice, keeping submodule outputs
    (``LayerInputs(reuse=True)``) and running every submodule, asserting that each group's rows and
    each layer's outputs are the same bits; ``correct(group)`` changes a group once observed.
    Returns the keeping walk, the submodules it kept at any point and those it held at each layer's end."""
    from hf_mudsc.repair.context import LayerInputs

    blocks = ctx.blocks()
    groups = ctx.forward_groups(model, ctx.shared_linears())
    fast, slow = LayerInputs(ctx, model, blocks, reuse=True), LayerInputs(ctx, model, blocks)
    kept: set[str] = set()
    at_ends = []
    for block in blocks:
        for group in [g for g in groups if g[0].startswith(block + ".")]:
            sites = [(m, "input") for m in group] + [(m, "output") for m in group[:1]]
            for rows, reference in zip(fast.observe_all(sites), slow.observe_all(sites), strict=True):
                for site in sites:
                    assert torch.equal(rows[site], reference[site]), site
            kept |= set(fast._kept)
            if correct is not None:
                correct(group)
        at_ends.append(set(fast._kept))
        fast.advance(), slow.advance()
        for b in range(len(ctx.batches)):
            assert torch.equal(fast.hidden(b), slow.hidden(b))
    return fast, kept, at_ends


def test_the_walk_drops_a_groups_parent_targets_once_the_group_is_corrected(monkeypatch):
    """The parents' outputs of one layer are held while its groups are corrected in forward order; a
    corrected group's are dropped, so the last group (the FFN output map) holds its own alone."""
    walk = importlib.import_module("hf_mudsc.repair.walk")  # the module (the package exports its function)

    model = tiny_model("bert-seq")
    models, transforms = copies_with_transforms(model, 1, None)
    held = []
    correct = walk._correct

    def recording(ctx, model, group, merged, seen, renorm, refit):
        held.append((list(group), {m for parent in seen for rows in parent for m, _ in rows}))
        return correct(ctx, model, group, merged, seen, renorm, refit)

    monkeypatch.setattr(walk, "_correct", recording)
    merged(models, transforms, ("stats", "lsq"), calibration(model))
    layer = [(g, h) for g, h in held if g[0].startswith("bert.encoder.layer.0.")]
    assert [g for g, _ in layer] == [["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key",
                                      "bert.encoder.layer.0.attention.self.value"],
                                     ["bert.encoder.layer.0.attention.output.dense"],
                                     ["bert.encoder.layer.0.intermediate.dense"], ["bert.encoder.layer.0.output.dense"]]
    for k, (group, sites) in enumerate(layer):  # this group's and the later ones', not the earlier ones'
        assert sites == {m for g, _ in layer[k:] for m in g}


def test_inputs_taken_at_the_first_map_of_a_group_are_the_same_rows_and_stop_before_it():
    """Maps that read one tensor (q, k, v) have their inputs taken at the first one's input: the
    same rows (each module's own token subset) as at their own inputs, and the run stops before
    the first of them runs."""
    from hf_mudsc.repair.context import LayerInputs, RepairContext

    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", repair="none")
    result = merger.merge(calibration(a, n=2), num_samples=16, progress=False)
    ctx = RepairContext([a, b], merger.unit_maps, result.transforms, result.weights, calibration(a, n=2),
                        max_tokens_per_batch=5)
    model = ctx.task_model(0)
    group = next(g for g in ctx.forward_groups(model, ctx.shared_linears()) if len(g) == 3)
    sites = [(m, "input") for m in group]
    ran = []
    hook = model.get_submodule(group[0]).register_forward_hook(lambda *args: ran.append(1))
    runs = LayerInputs(ctx, model, ctx.blocks())
    shared = list(runs.observe_all(sites, inputs_at={m: group[0] for m in group}))
    assert not ran
    own = list(runs.observe_all(sites))
    hook.remove()
    assert ran
    for x, y in zip(shared, own, strict=True):
        for site in sites:
            assert torch.equal(x[site], y[site]), site
    assert not torch.equal(shared[0][sites[0]], shared[0][sites[1]])  # each module's own 5-token subset


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_task_models_of_the_repairs_hold_the_merged_weights_themselves(dtype):
    """The repairs' task models hold one copy of the shared parameters in all: the merged weights'
    own tensors (not one copy per task, nor one beside the weights), each task keeps its own heads,
    a correction of a shared map reaches every task and the merged weights, and no parent's tensor
    is held (a float64 parent's tensors that no transform touches come through the merge as they are)."""
    from hf_mudsc.repair.context import RepairContext

    a, b = (tiny_model("bert-seq", seed=s).to(dtype) for s in (0, 1))
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", repair="none")
    result = merger.merge(calibration(a, n=2), num_samples=16, progress=False)
    ctx = RepairContext([a, b], merger.unit_maps, result.transforms, result.weights, calibration(a, n=2))
    first, second = (dict(ctx.task_model(i).named_parameters()) for i in (0, 1))
    weights = {name: t.data_ptr() for name, t in result.weights.shared.items()}
    parents = {t.data_ptr() for t in (*a.parameters(), *b.parameters())}
    private = {t.data_ptr() for t in (*result.weights.private[0].values(), *result.weights.private[1].values())}
    held = 0
    for name in first:
        assert (first[name].data_ptr() == second[name].data_ptr()) == (name in weights), name
        assert first[name].data_ptr() not in parents | private and second[name].data_ptr() not in parents, name
        held += weights.get(name) == first[name].data_ptr()
    passed = sum(t.data_ptr() in parents for t in result.weights.shared.values())
    assert held == len(weights) - passed > 0
    module = ctx.shared_linears()[0]
    weight = ctx.task_model(0).get_submodule(module).weight.detach().clone()
    ctx.set_linear(module, weight + 1.0, None)
    for i in (0, 1):
        assert torch.equal(ctx.task_model(i).get_submodule(module).weight, weight + 1.0)
    assert torch.equal(ctx.weights.shared[f"{module}.weight"], weight + 1.0)
    apply_repairs(ALL, [a, b], merger.unit_maps, result.transforms, result.weights, calibration(a, n=2))
    for m, kept in zip((a, b), before):
        for k, v in m.state_dict().items():
            assert torch.equal(v, kept[k]), k


# ---------------------------------------------------------------------------- parents' outputs recorded

def _layer_runs(model, merger):
    """Hooks counting the runs of ``model``'s encoder layers; returns the list they append to and the handles."""
    from hf_mudsc.repair.context import encoder_blocks

    calls = []
    return calls, [model.get_submodule(block).register_forward_hook(lambda *_: calls.append(1))
                   for block in encoder_blocks(merger.unit_maps[0])]


def _repaired(a, b, calib, record, monkeypatch, **config):
    """A default merge of ``a`` and ``b`` with the parents' outputs recorded by the statistics pass or
    not; the merged weights and how often ``a``'s encoder layers ran in all."""
    from hf_mudsc.repair.recorded import ParentOutputs

    monkeypatch.setattr(ParentOutputs, "usable", staticmethod(lambda models: record))
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", **config)
    calls, handles = _layer_runs(a, merger)
    try:
        result = merger.merge(calib, num_samples=24, progress=False)
    finally:
        for h in handles:
            h.remove()
    return result.weights, len(calls), merger


@pytest.mark.parametrize("kind", ["bert-seq", "vit-cls"])
@pytest.mark.parametrize("statistics_samples,repair_samples", [(512, None), (16, None), (512, 16)])
def test_repairs_read_the_parents_outputs_that_the_statistics_pass_recorded(kind, statistics_samples, repair_samples,
                                                                            monkeypatch):
    """The statistics pass records what the repairs would compute of the parents on its batches (the
    repairs' first ones): the repaired weights are the same bits, and the parents' layers run in the
    repairs only on the batches the statistics did not read (statistics on 16 of 24 samples: 2 of 3);
    repairs on fewer samples than the statistics (16) have only their own batches recorded."""
    a, b = tiny_model(kind, seed=0), tiny_model(kind, seed=1)
    calib = calibration(a, n=3)  # 3 batches of 8
    layers = a.config.num_hidden_layers
    settings = dict(statistics_samples=statistics_samples, repair_samples=repair_samples)
    recorded, runs, merger = _repaired(a, b, calib, True, monkeypatch, **settings)
    fresh, fresh_runs, _ = _repaired(a, b, calib, False, monkeypatch, **settings)
    read = 3 if statistics_samples == 512 else 2  # batches the statistics read
    repaired = 3 if repair_samples is None else 2  # batches the repairs read
    assert sorted(merger._recorded.complete) == list(range(min(read, repaired)))
    assert fresh_runs == (read + repaired) * layers  # the statistics, then the repairs on every batch
    assert runs == (read + repaired - min(read, repaired)) * layers  # the repairs only where nothing was recorded
    for name, t in fresh.shared.items():
        assert torch.equal(recorded.shared[name], t), name
    for i, private in enumerate(fresh.private):
        for name, t in private.items():
            assert torch.equal(recorded.private[i][name], t), name


def test_texts_of_the_repairs_are_batched_as_the_first_of_the_statistics_and_recorded(tmp_path, monkeypatch):
    """Texts: the repairs' first ``repair_samples`` rows and the statistics' first ``statistics_samples``
    are each batched apart from the rest, so that the repairs' batches (here fewer rows) are the
    statistics' first ones: all recorded, the parents' layers never run in the repairs, the same bits."""
    from hf_mudsc.repair.recorded import ParentOutputs
    from parents_on_disk import bert_parents, text_dataset

    folders = bert_parents(tmp_path)

    def merged(record: bool):
        monkeypatch.setattr(ParentOutputs, "usable", staticmethod(lambda models: record))
        merger = MuDSCMerger.from_pretrained(folders, "mudsc", statistics_samples=24, repair_samples=10,
                                             max_sweeps=1)
        counts = [_layer_runs(p.model, merger) for p in merger.parents]
        result = merger.merge(text_dataset(40), num_samples=40, batch_size=4, progress=False)
        runs = [len(calls) for calls, _ in counts]
        for _, handles in counts:
            for h in handles:
                h.remove()
        return result.weights, runs, merger

    recorded, runs, merger = merged(True)
    fresh, fresh_runs, _ = merged(False)
    stats, repairs = (len(list(merger._calibration_source.head(n))) for n in (24, 10))
    layers = merger.parents[0].model.config.num_hidden_layers
    assert sorted(merger._recorded.complete) == list(range(repairs)) and repairs < stats
    assert fresh_runs == [(stats + repairs) * layers] * 2 and runs == [stats * layers] * 2
    for name, t in fresh.shared.items():
        assert torch.equal(recorded.shared[name], t), name


def test_recorded_outputs_are_used_only_where_they_are_what_the_repairs_compute(monkeypatch):
    """Another token cap for the repairs than the one recorded, or batches other than the recorded ones,
    run the parents as before (the same bits as without recording); outputs past the size limit (or
    half the temporary folder's free space) are not recorded, and half-precision parents (repaired as
    float32 copies) record nothing."""
    from hf_mudsc.repair.recorded import ParentOutputs

    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    calib = calibration(a, n=3)
    layers = a.config.num_hidden_layers

    def other_repairs(record: bool):
        _, _, merger = _repaired(a, b, calib, record, monkeypatch)
        transforms = merger.solve(progress=False)[0]
        calls, handles = _layer_runs(a, merger)
        capped = merger.apply(transforms, merger.config.with_updates(repair_tokens_per_batch=5)).weights
        merger._fit_batches = (merger._calibration_source, None, [calib[1], calib[2], calib[0]])  # other batches
        shuffled = merger.apply(transforms).weights
        for h in handles:
            h.remove()
        return capped, shuffled, len(calls), merger._recorded

    *recorded, runs, store = other_repairs(True)
    assert store.cap == 256 and sorted(store.complete) == [0, 1, 2]
    assert runs == 6 * layers  # every batch, in both repairs
    *fresh, _, _ = other_repairs(False)
    for mine, theirs in zip(recorded, fresh):
        for name, t in theirs.shared.items():
            assert torch.equal(mine.shared[name], t), name
    monkeypatch.setattr("hf_mudsc.repair.recorded.MAX_BYTES", 500_000)  # 1 of the 3 batches (0.35 MB each)
    _, runs, merger = _repaired(a, b, calib, True, monkeypatch)
    assert merger._recorded.complete == {0} and runs == 5 * layers
    monkeypatch.setattr("hf_mudsc.repair.recorded.MAX_BYTES", 10**12)
    free = shutil.disk_usage(tempfile.gettempdir())._replace(free=1_000_000)  # half of it: 1 batch again
    monkeypatch.setattr("hf_mudsc.repair.recorded.shutil.disk_usage", lambda path: free)
    _, runs, merger = _repaired(a, b, calib, True, monkeypatch)
    assert merger._recorded.complete == {0} and runs == 5 * layers
    monkeypatch.undo()
    assert ParentOutputs.usable([a]) and not ParentOutputs.usable([a.to(torch.bfloat16)])

"""Streamed activation statistics: hooks, masks, moments, merging."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

from hf_mudsc.statistics import (
    Moments,
    collect_statistics,
    model_slices,
    plan_space_groups,
    reduce_moments,
)
from hf_mudsc.unitmaps.spaces import Heads, Member, MergeSpace, Site, UnitMap

H = 32

# float32 activations: each batch's products are float32, summed in float64 across batches
F32_PRODUCTS = 1e-5


# --------------------------------------------------------------------------- tiny models and maps


def tiny_bert(seed: int, intermediate: int = 64) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=intermediate, vocab_size=100, max_position_embeddings=32)
    return BertForSequenceClassification(cfg).eval()


def tiny_vit(seed: int) -> ViTForImageClassification:
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=H, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64)
    return ViTForImageClassification(cfg).eval()


def bert_map(intermediate: int = 64) -> UnitMap:
    layer = "bert.encoder.layer"
    return UnitMap("bert", 2, [
        MergeSpace("residual", H, (Member("bert.embeddings.word_embeddings.weight", 1, "out", -1),),
                   sites=tuple(Site(f"{layer}.{i}", "input") for i in range(2))),
        MergeSpace("qk_0", H, (Member(f"{layer}.0.attention.self.query.weight", 0, "out", 0),),
                   sites=(Site(f"{layer}.0.attention.self.query", "output"),
                          Site(f"{layer}.0.attention.self.key", "output")),
                   layer=0, heads=Heads(4, H // 4), group="attn_0"),
        MergeSpace("ffn_0", intermediate, (Member(f"{layer}.0.intermediate.dense.weight", 0, "out", 0),),
                   sites=(Site(f"{layer}.0.output.dense", "input"),), layer=0),
        MergeSpace("pooler", H, (Member("bert.pooler.dense.weight", 0, "out", 2),),
                   sites=(Site("bert.pooler", "output", per_token=False),), layer=2),
    ])


def vit_map() -> UnitMap:
    layer = "vit.layers"
    return UnitMap("vit", 2, [
        MergeSpace("residual", H, (Member("vit.embeddings.cls_token", 2, "out", -1),),
                   sites=tuple(Site(f"{layer}.{i}", "input") for i in range(2))),
        MergeSpace("qk_0", H, (Member(f"{layer}.0.attention.q_proj.weight", 0, "out", 0),),
                   sites=(Site(f"{layer}.0.attention.q_proj", "output"), Site(f"{layer}.0.attention.k_proj", "output")),
                   layer=0),
        MergeSpace("ffn_1", 64, (Member(f"{layer}.1.mlp.fc1.weight", 0, "out", 1),),
                   sites=(Site(f"{layer}.1.mlp.fc2", "input"),), layer=1),
    ])


def sentences(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 12, (n,), generator=g).tolist()
    return [torch.randint(1, 100, (k,), generator=g).tolist() for k in lengths]


def text_batch(sents: list[list[int]], extra_pad: int = 0) -> dict[str, torch.Tensor]:
    width = max(map(len, sents)) + extra_pad
    ids = torch.zeros(len(sents), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(sents):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def text_batches(sents: list[list[int]], size: int, extra_pad: int = 0) -> list[dict[str, torch.Tensor]]:
    return [text_batch(sents[i : i + size], extra_pad) for i in range(0, len(sents), size)]


# --------------------------------------------------------------------------- direct reference


def site_value(site: Site, args: tuple, output: object) -> torch.Tensor:
    if site.kind == "input":
        return args[0]
    return output[0] if isinstance(output, tuple) else output


def direct_features(models, maps, batches, names) -> dict[str, torch.Tensor]:
    """Store every site tensor, mask padding by hand, concatenate models: (samples, D) float64."""
    store: dict[tuple, list[torch.Tensor]] = {}
    handles = []
    for i, (model, um) in enumerate(zip(models, maps)):
        for n in names:
            for j, site in enumerate(um[n].sites):
                def hook(mod, args, output, key=(n, j, i), site=site):
                    store.setdefault(key, []).append(site_value(site, args, output).detach().double())
                handles.append(model.get_submodule(site.module).register_forward_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                for m in models:
                    m(**b)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n in names:
        rows = []
        for j in range(len(maps[0][n].sites)):
            for t, b in enumerate(batches):
                parts = []
                for i in range(len(models)):
                    x = store[(n, j, i)][t]
                    if x.ndim == 3:
                        keep = b["attention_mask"].bool() if "attention_mask" in b else torch.ones(x.shape[:2], dtype=torch.bool)
                        x = x[keep]
                    parts.append(x)
                rows.append(torch.cat(parts, dim=1))
        out[n] = torch.cat(rows)
    return out


def direct_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / x.shape[0]
    std = cov.diagonal().sqrt()
    return mean, cov, cov / torch.outer(std, std)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def assert_moments_equal(a: Moments, b: Moments, tol: float) -> None:
    assert a.n == b.n
    assert rel_err(a.mean, b.mean) < tol
    assert rel_err(a.cov, b.cov) < tol


def no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_hooks_with_kwargs for m in model.modules())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def berts():
    """Two tiny BERTs from different inits, with different FFN widths (64 and 48)."""
    return [tiny_bert(0), tiny_bert(1, intermediate=48)], [bert_map(), bert_map(48)]


@pytest.fixture(scope="module")
def berts64():
    """Two tiny float64 BERTs, so that invariance tests see no fp32 noise."""
    return [tiny_bert(0).double(), tiny_bert(1).double()], [bert_map(), bert_map()]


# --------------------------------------------------------------------------- collection


def test_bert_streamed_equals_direct(berts):
    models, maps = berts
    batches = text_batches(sentences(10), 4)
    stats = collect_statistics(models, maps, batches, progress=False)
    ref = direct_features(models, maps, batches, maps[0].space_names)
    assert list(stats) == maps[0].space_names
    assert stats["ffn_0"].dim == 64 + 48
    assert model_slices(maps, "ffn_0") == [slice(0, 64), slice(64, 112)]
    real = sum(len(s) for s in sentences(10))
    assert stats["residual"].n == 2 * real and stats["qk_0"].n == 2 * real and stats["pooler"].n == 10
    for name, m in stats.items():
        mean, cov, corr = direct_moments(ref[name])
        assert m.n == ref[name].shape[0]
        # the same float32 features: sums in float64 (measured <= 2e-15), each batch's products in
        # float32 (measured <= 2e-7; the bound is test_float32_batch_products_within_the_stated_bound)
        assert rel_err(m.mean, mean) < 1e-12
        assert rel_err(m.cov, cov) < F32_PRODUCTS
        assert (m.corr() - corr).abs().max() < F32_PRODUCTS


def test_vit_streamed_equals_direct_all_tokens_count():
    models, maps = [tiny_vit(0), tiny_vit(1)], [vit_map(), vit_map()]
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(b, 1, 16, 16, generator=g)} for b in (3, 2)]
    stats = collect_statistics(models, maps, batches, progress=False)
    ref = direct_features(models, maps, batches, maps[0].space_names)
    assert stats["residual"].n == 2 * 5 * 17  # two sites, 5 images, 16 patches + CLS
    for name, m in stats.items():
        mean, cov, _ = direct_moments(ref[name])
        assert rel_err(m.mean, mean) < 1e-12 and rel_err(m.cov, cov) < F32_PRODUCTS


# What each space of the shipped unit maps observes (DESIGN §3.2), named here by hand, per layer i:
# (module, "input" or "output") of every site; the residual stream comes from output_hidden_states.
OBSERVED = {
    "bert-seq": {
        "qk": [("bert.encoder.layer.{i}.attention.self.query", "output"),
               ("bert.encoder.layer.{i}.attention.self.key", "output")],
        "vo": [("bert.encoder.layer.{i}.attention.output.dense", "input")],
        "ffn": [("bert.encoder.layer.{i}.intermediate", "output")],  # after the activation
        "pooler": [("bert.pooler", "output")],
    },
    "distilbert-seq": {
        "qk": [("distilbert.transformer.layer.{i}.attention.q_lin", "output"),
               ("distilbert.transformer.layer.{i}.attention.k_lin", "output")],
        "vo": [("distilbert.transformer.layer.{i}.attention.out_lin", "input")],
        "ffn": [("distilbert.transformer.layer.{i}.ffn.activation", "output")],
    },
    "electra-small": {
        "embeddings": [("electra.embeddings", "output")],  # before the projection into the layers' width
        "qk": [("electra.encoder.layer.{i}.attention.self.query", "output"),
               ("electra.encoder.layer.{i}.attention.self.key", "output")],
        "vo": [("electra.encoder.layer.{i}.attention.output.dense", "input")],
        "ffn": [("electra.encoder.layer.{i}.intermediate", "output")],
    },
    "vit-cls": {
        "qk": [("vit.layers.{i}.attention.q_proj", "output"), ("vit.layers.{i}.attention.k_proj", "output")],
        "vo": [("vit.layers.{i}.attention.o_proj", "input")],
        "ffn": [("vit.layers.{i}.mlp.activation_fn", "output")],
    },
}


def observed_features(models, kind: str, batches) -> dict[str, torch.Tensor]:
    """Each space's samples (rows; the models' features side by side) from plain forward hooks on
    the modules named in :data:`OBSERVED` and from ``output_hidden_states``; padding dropped."""
    layers = models[0].config.num_hidden_layers
    sites = {n: OBSERVED[kind][n] for n in ("embeddings", "pooler") if n in OBSERVED[kind]}
    for i in range(layers):
        for part in ("qk", "vo", "ffn"):
            sites[f"layer.{i}.{part}"] = [(m.format(i=i), k) for m, k in OBSERVED[kind][part]]
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in ["residual", *sites]}
    for b in batches:
        keep = b["attention_mask"].bool() if "attention_mask" in b else None
        per_model: list[dict[str, list[torch.Tensor]]] = []
        for model in models:
            seen: dict[str, list[torch.Tensor]] = {n: [] for n in sites}
            handles = [model.get_submodule(module).register_forward_hook(
                lambda mod, args, out, n=n, k=k: seen[n].append(args[0] if k == "input" else out))
                for n, site_list in sites.items() for module, k in site_list]
            try:
                with torch.no_grad():
                    seen["residual"] = list(model(**b, output_hidden_states=True).hidden_states)
            finally:
                for h in handles:
                    h.remove()
            per_model.append(seen)
        for n in rows:
            for j in range(len(per_model[0][n])):
                feats = [seen[n][j].double() for seen in per_model]
                if feats[0].dim() == 3:
                    feats = [f[keep] if keep is not None else f.flatten(0, 1) for f in feats]
                rows[n].append(torch.cat(feats, dim=1))
    return {n: torch.cat(r) for n, r in rows.items()}


@pytest.mark.parametrize("kind", sorted(OBSERVED))
def test_shipped_unit_maps_observe_the_designed_tensors(kind):
    from conftest import tiny_inputs, tiny_model

    from hf_mudsc.unitmaps import unit_map_of

    models = [tiny_model(kind, seed=s, dtype=torch.float32) for s in (0, 1)]
    batches = [tiny_inputs(models[0], batch=4, seed=s) for s in (5, 6)]
    stats = collect_statistics(models, [unit_map_of(m) for m in models], batches, progress=False)
    ref = observed_features(models, kind, batches)
    assert sorted(stats) == sorted(ref)
    for name, m in stats.items():
        mean, cov, _ = direct_moments(ref[name])
        assert m.n == ref[name].shape[0], name
        assert rel_err(m.mean, mean) < 1e-12 and rel_err(m.cov, cov) < F32_PRODUCTS, name


def test_unchanged_by_padding_and_batch_size(berts64):
    models, maps = berts64
    sents = sentences(7, seed=3)
    ref = collect_statistics(models, maps, text_batches(sents, 7), progress=False)
    for size, pad in [(1, 0), (3, 0), (7, 5), (3, 2)]:
        got = collect_statistics(models, maps, text_batches(sents, size, pad), progress=False)
        for name in ref:
            assert_moments_equal(got[name], ref[name], 1e-10)


def test_token_cap_same_subset_across_models(berts64):
    a = berts64[0][0]
    models, maps = [a, copy.deepcopy(a)], [bert_map(), bert_map()]
    batches = text_batches(sentences(8, seed=5), 4)
    cap = 5
    stats = collect_statistics(models, maps, batches, max_tokens_per_batch=cap, seed=1, progress=False)
    per_batch = [min(cap, int(b["attention_mask"].sum())) for b in batches]
    assert stats["residual"].n == 2 * sum(per_batch)
    assert stats["pooler"].n == sum(min(cap, 4) for _ in batches)
    for name, m in stats.items():
        d = m.dim // 2
        cross = m.corr()[:d, d:].diagonal()
        assert (cross - 1).abs().max() < 1e-10, name
    again = collect_statistics(models, maps, batches, max_tokens_per_batch=cap, seed=1, progress=False)
    other = collect_statistics(models, maps, batches, max_tokens_per_batch=cap, seed=2, progress=False)
    assert torch.equal(again["residual"].s2, stats["residual"].s2)
    assert not torch.allclose(other["residual"].s2, stats["residual"].s2)


def test_merge_of_two_passes_equals_one(berts64):
    models, maps = berts64
    batches = text_batches(sentences(9, seed=7), 3)
    whole = collect_statistics(models, maps, batches, progress=False)
    first = collect_statistics(models, maps, batches[:1], progress=False)
    rest = collect_statistics(models, maps, batches[1:], progress=False)
    for name in whole:
        assert_moments_equal(first[name].merge(rest[name]), whole[name], 1e-10)


def test_spaces_subset(berts):
    models, maps = berts
    batches = text_batches(sentences(5), 5)
    full = collect_statistics(models, maps, batches, progress=False)
    part = collect_statistics(models, maps, batches, spaces=["qk_0"], progress=False)
    assert list(part) == ["qk_0"]
    assert torch.equal(part["qk_0"].s2, full["qk_0"].s2)
    unobserved = [UnitMap("bert", 2, um.spaces + [MergeSpace("weights_only", H, ())]) for um in maps]
    assert list(collect_statistics(models, unobserved, batches, progress=False)) == maps[0].space_names
    with pytest.raises(ValueError, match="nope"):
        collect_statistics(models, maps, batches, spaces=["nope"], progress=False)


def test_hooks_removed_and_modes_restored_after_error(berts):
    models, maps = berts
    models[0].train()

    def failing():
        yield text_batch(sentences(2)[:2])
        raise RuntimeError("loader broke")

    try:
        with pytest.raises(RuntimeError, match="loader broke"):
            collect_statistics(models, maps, failing(), progress=False)
        assert all(no_hooks(m) for m in models)
        assert models[0].training and all(m.training for m in models[0].modules())
        assert not models[1].training
    finally:
        models[0].eval()


def test_nan_activation_names_space_and_model(berts):
    models, maps = berts
    bad = copy.deepcopy(models[1])
    with torch.no_grad():
        bad.bert.encoder.layer[0].attention.self.query.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"space 'qk_0', model 1"):
        collect_statistics([models[0], bad], maps, text_batches(sentences(3), 3), progress=False)
    assert no_hooks(models[0]) and no_hooks(bad)


def test_unknown_module_is_reported(berts):
    models, maps = berts
    broken = UnitMap("bert", 2, [MergeSpace("x", H, (), sites=(Site("bert.nowhere", "input"),))])
    with pytest.raises(ValueError, match="bert.nowhere"):
        collect_statistics(models, [broken, broken], text_batches(sentences(2), 2), progress=False)
    assert all(no_hooks(m) for m in models)


# --------------------------------------------------------------------------- moments


def test_large_mean_is_accurate_where_naive_fp32_fails():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 6, generator=g, dtype=torch.float64)
    x = 1e4 + z @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    m = Moments(6)
    for chunk in x.split(400):
        m.update(chunk.float())  # fp32 activations, like a model's
    x32 = x.float().double()
    mean, cov, corr = direct_moments(x32)
    # float32 batch products: within (400 + 2) * 2**-24 ~ 2.4e-5 (test below); far tighter here
    assert (m.corr() - corr).abs().max() < 1e-6
    assert rel_err(m.cov, cov) < 1e-6
    xf = x.float()
    mu = xf.mean(0)
    naive = xf.T @ xf / xf.shape[0] - torch.outer(mu, mu)
    assert rel_err(naive.double(), cov) > 0.1  # the defect the shift avoids


def test_zero_variance_units_give_zero_not_nan():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    x[:, 1] = 0.1
    x[:, 3] = 0.0
    halves = [Moments(4).update(x[:20]), Moments(4).update(x[20:])]
    for m in [Moments(4).update(x), halves[0].merge(halves[1])]:
        corr = m.corr()
        assert torch.isfinite(corr).all()
        assert m.cov[1, 1] == 0 and m.cov[3, 3] == 0
        assert torch.equal(corr.diagonal(), torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64))
        assert not corr[[1, 3]].any() and not corr[:, [1, 3]].any()


def test_merge_with_different_shifts_and_roundtrip():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(100, 5, generator=g, dtype=torch.float64)
    b = torch.randn(70, 5, generator=g, dtype=torch.float64) * 3 + 50
    whole = Moments(5).update(torch.cat([a, b]))
    left, right = Moments(5).update(a), Moments(5).update(b)
    assert not torch.allclose(left.shift, right.shift)
    merged = Moments.from_dict(left.to_dict()).merge(right)
    assert_moments_equal(merged, whole, 1e-12)
    assert_moments_equal(Moments(5).merge(right).merge(left), whole, 1e-12)
    assert torch.equal(Moments.from_dict(right.to_dict()).s2, right.s2) and right.n == 70
    assert reduce_moments({"s": whole}, None)["s"] is whole
    with pytest.raises(ValueError, match="no samples"):
        Moments(3).cov


def test_float32_batch_products_within_the_stated_bound():
    """float32 activations: each batch's products in float32, summed in float64 across batches;
    every entry of s2 is within (N + 2) * 2**-24 * sum_k |y_ka| |y_kb| of the exact sum."""
    g = torch.Generator().manual_seed(3)
    x = (50 + torch.randn(1500, 9, generator=g, dtype=torch.float64) @ torch.randn(9, 9, generator=g,
                                                                                  dtype=torch.float64)).float()
    sizes = [300, 1, 500, 199, 500]
    m = Moments(9)
    for chunk in x.split(sizes):
        m.update(chunk)
    y = x.double() - m.shift  # exact: float32 values are float64 numbers
    exact, scale = y.T @ y, y.abs().T @ y.abs()
    bound = (max(sizes) + 2) * 2.0**-24 * scale + 1e-12 * scale
    assert ((m.s2 - exact).abs() <= bound).all()
    assert (m.s2 - exact).abs().max() > 0  # the float32 path ran
    exact64 = Moments(9)
    for chunk in x.double().split(sizes):
        exact64.update(chunk)
    assert rel_err(exact64.s2, exact) < 1e-12  # float64 activations keep float64 products


def test_block_storage_equals_one_block(monkeypatch):
    """s2 in upper-triangular blocks (here of 3 units) gives the full matrix: update, merge, recentre."""
    import hf_mudsc.statistics.moments as moments

    g = torch.Generator().manual_seed(4)
    x = torch.randn(80, 7, generator=g, dtype=torch.float64) * 2 + 5
    whole = Moments(7).update(x)
    monkeypatch.setattr(moments, "BLOCK", 3)
    blocked = Moments(7).update(x[:30]).merge(Moments(7).update(x[30:]))
    assert len(blocked._s2) == 6  # 3 blocks: (0,0) (0,1) (0,2) (1,1) (1,2) (2,2)
    assert_moments_equal(blocked, whole, 1e-12)
    assert (blocked.corr() - whole.corr()).abs().max() < 1e-12
    assert blocked.corr(torch.float32).dtype == torch.float32
    assert_moments_equal(Moments.from_dict(blocked.to_dict()).recentre(torch.zeros(7)), whole, 1e-12)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=5), st.integers(0, 2**16))
def test_any_split_merges_to_the_whole(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes) + 2, 3, generator=g, dtype=torch.float64) * 10 + 100
    total, start = Moments(3), 0
    for k in sizes + [2]:
        total.merge(Moments(3).update(x[start : start + k]))
        start += k
    assert_moments_equal(total, Moments(3).update(x), 1e-10)


# --------------------------------------------------------------------------- planning


def test_plan_space_groups_fits_budget():
    maps = [bert_map(), bert_map(48)]
    cost = {n: 8 * sum(um[n].dim for um in maps) ** 2 for n in maps[0].space_names}
    budget = cost["ffn_0"] + cost["qk_0"]
    groups = plan_space_groups(maps, budget)
    assert sorted(n for g in groups for n in g) == sorted(cost)
    assert all(sum(cost[n] for n in g) <= budget for g in groups)
    assert len(groups) == 2
    assert plan_space_groups(maps, 10**9) == [maps[0].space_names]
    with pytest.raises(ValueError, match="ffn_0"):
        plan_space_groups(maps, cost["ffn_0"] - 1)

"""Parents of different widths (elastic zip), and of different depths and widths at once."""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import outputs, tiny_inputs, tiny_model

from hf_mudsc import MuDSCMerger
from hf_mudsc.loading import ParentError
from hf_mudsc.quality import MergeQualityWarning


def calibration(model, n=4, size=8):
    return [tiny_inputs(model, batch=size, seed=200 + i) for i in range(n)]


def widened(original: torch.nn.Module, extra_heads: int = 2, extra_units: int = 24, seed: int = 7) -> torch.nn.Module:
    """``original`` with extra attention heads and FFN units whose outputs are exactly zero (random
    reads, zero writes): the same function at a larger width."""
    cfg = original.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    wide = tiny_model("vit-cls", seed=seed, num_attention_heads=cfg.num_attention_heads + extra_heads,
                      intermediate_size=cfg.intermediate_size + extra_units, head_dim=head_dim)
    old = dict(original.named_parameters())
    qk = cfg.num_attention_heads * head_dim
    with torch.no_grad():
        for name, p in wide.named_parameters():
            src = old[name]
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "fc1.weight")):
                p[: src.shape[0]] = src
            elif name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias", "fc1.bias")):
                p[: src.shape[0]] = src
            elif name.endswith(("o_proj.weight", "fc2.weight")):
                p.zero_()
                p[:, : src.shape[1]] = src
            else:
                p.copy_(src)
    assert wide.vit.layers[0].attention.q_proj.weight.shape[0] == qk + extra_heads * head_dim
    return wide


def test_widened_parent_computes_the_original_function():
    original = tiny_model("vit-cls", seed=4)
    x = tiny_inputs(original)
    torch.testing.assert_close(outputs(widened(original), x), outputs(original, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["activation-matching", "zipit", "mudsc"])
def test_a_parent_widened_with_zero_output_units_merges_back_to_the_original(method):
    original = tiny_model("vit-cls", seed=4)
    wide = widened(original)
    merger = MuDSCMerger.from_pretrained([original, wide], method)
    result = merger.merge(calibration(original), progress=False)
    config = result.task_models[0].config
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (32, 6, 88)
    x = tiny_inputs(original)
    for task in result.task_models:
        torch.testing.assert_close(outputs(task, x), outputs(original, x), rtol=0, atol=1e-5)


def test_a_different_head_dim_is_refused_in_one_line():
    with pytest.raises(ParentError, match="^parents have different attention head sizes: .* merging needs one head_dim$"):
        MuDSCMerger.from_pretrained([tiny_model("vit-cls"), tiny_model("vit-cls", num_attention_heads=2)])


@pytest.mark.parametrize("kind", ["vit-cls", "bert-seq"])
@pytest.mark.parametrize("narrow", [dict(hidden_size=16, num_attention_heads=2, intermediate_size=40),
                                    dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=3)])
def test_merged_configs_are_the_widest_and_the_deepest(kind, narrow):
    a, b = tiny_model(kind, seed=0), tiny_model(kind, seed=1, **narrow)
    result = MuDSCMerger.from_pretrained([a, b], "mudsc", zip_budget=0.5).merge(calibration(a), progress=False)
    depth = max(2, narrow.get("num_hidden_layers", 2))
    for task in result.task_models:
        c = task.config
        assert (c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_hidden_layers) == (32, 4, 64, depth)
        assert task.classifier.weight.shape[1] == 32  # the narrower parent's head reads the merged space
        x = tiny_inputs(task)
        assert torch.isfinite(outputs(task, x)).all()
    assert result.model(**tiny_inputs(a)).logits.shape == (4, 6)


def test_three_parents_of_different_widths():
    models = [tiny_model("bert-seq", seed=s, **kw) for s, kw in enumerate(
        [dict(hidden_size=16, num_attention_heads=2), {}, dict(hidden_size=24, num_attention_heads=3, intermediate_size=48)])]
    result = MuDSCMerger.from_pretrained(models, "zipit", zip_budget=0.3).merge(calibration(models[1]), progress=False)
    assert {t.config.hidden_size for t in result.task_models} == {32}
    assert result.transforms["layer.1.qk"].sizes() == [16, 32, 24]


def test_more_than_two_parents_of_different_depths_are_refused():
    with pytest.raises(ParentError, match="two at a time"):
        MuDSCMerger.from_pretrained([tiny_model("vit-cls"), tiny_model("vit-cls", seed=1),
                                     tiny_model("vit-cls", seed=2, num_hidden_layers=3)])


def test_partial_merge_of_different_widths_is_refused():
    with pytest.raises(ValueError, match="partial merge .* different widths"):
        MuDSCMerger.from_pretrained([tiny_model("vit-cls"), tiny_model("vit-cls", hidden_size=16, num_attention_heads=2)],
                                    merge_layers=1)


def test_a_widened_parent_merged_with_every_repair_merges_back_to_the_original():
    original = tiny_model("vit-cls", seed=4)
    result = MuDSCMerger.from_pretrained([original, widened(original)], "mudsc", repair="stats,lsq,heads") \
        .merge(calibration(original), progress=False)
    assert [r["repair"] for r in result.repairs] == ["stats", "lsq", "heads"]
    assert all(r["maps"] > 0 for r in result.repairs)
    x = tiny_inputs(original)
    for task in result.task_models:
        assert task.config.intermediate_size == 88
        torch.testing.assert_close(outputs(task, x), outputs(original, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["vit-cls", "bert-seq"])
@pytest.mark.parametrize("narrow", [dict(hidden_size=16, num_attention_heads=2, intermediate_size=40),
                                    dict(num_hidden_layers=3),
                                    dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=3)])
def test_the_default_merge_repairs_parents_of_different_depths_or_widths(kind, narrow):
    a, b = tiny_model(kind), tiny_model(kind, seed=1, **narrow)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MergeQualityWarning)  # no "merging without the repairs"
        merger = MuDSCMerger.from_pretrained([a, b])
    assert merger.config.repair is None and merger.config.to_dict()["resolved_repair"] == ["stats", "lsq", "heads"]
    result = merger.merge(calibration(a, n=6), progress=False)
    assert [r["repair"] for r in result.repairs] == ["stats", "lsq", "heads"]
    assert all(r["maps"] > 0 for r in result.repairs)
    assert result.recipe()["config"]["resolved_repair"] == ["stats", "lsq", "heads"]
    for task in result.task_models:
        x = tiny_inputs(task)
        assert torch.isfinite(outputs(task, x)).all()
    assert result.model(**tiny_inputs(a)).logits.shape == (4, 6)


@pytest.mark.parametrize("repair", ["none", "stats,lsq,heads"])
def test_roberta_of_different_widths_widens_the_narrower_two_layer_head(repair, tmp_path):
    """RoBERTa's classifier is dense (hidden x hidden) -> tanh -> out_proj: the narrower parent's head
    gains zero units (zero rows and bias in, zero columns out), which computes the same function."""
    from transformers import AutoModelForSequenceClassification

    a = tiny_model("roberta-seq", seed=0, hidden_size=16, num_attention_heads=2, intermediate_size=40)
    b = tiny_model("roberta-seq", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", repair=repair)
    result = merger.merge(calibration(b), progress=False)
    head = result.weights.private[0]
    assert head["classifier.dense.weight"].shape == (32, 32) and head["classifier.out_proj.weight"].shape == (3, 32)
    assert not head["classifier.dense.weight"][16:].any() and not head["classifier.dense.bias"][16:].any()
    assert not head["classifier.out_proj.weight"][:, 16:].any()
    unpadded = merger.apply(result.transforms, merger.config.with_updates(repair="none"))  # same shapes after widening
    x = torch.randn(5, 32, dtype=torch.float64)
    w, bias, out_w, out_b = (unpadded.weights.private[0][f"classifier.{n}"][:16] if n.startswith("dense") else
                             unpadded.weights.private[0][f"classifier.{n}"] for n in ("dense.weight", "dense.bias",
                                                                                      "out_proj.weight", "out_proj.bias"))
    narrow = torch.tanh(x @ w.T + bias) @ out_w[:, :16].T + out_b
    wide = result.task_models[0].classifier if repair == "none" else unpadded.task_models[0].classifier
    torch.testing.assert_close(wide(x.unsqueeze(1)), narrow, rtol=0, atol=1e-12)
    result.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged" / "tasks" / "0")
    assert loaded.config.hidden_size == 32 and loaded.classifier.dense.weight.shape == (32, 32)
    assert result.model(**tiny_inputs(b)).logits.shape == (4, 6)

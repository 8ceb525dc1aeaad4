"""The merger's contract: determinism, cheap re-solves, data requirements, partial merges."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import outputs, tiny_inputs, tiny_model
from hf_mudsc import MuDSCMerger
from hf_mudsc.config import ConfigError
from hf_mudsc.loading import ParentError
from hf_mudsc.statistics import plan_space_groups


def calibration(model, n=4, size=8):
    return [tiny_inputs(model, batch=size, seed=200 + i) for i in range(n)]


def merged_bytes(result) -> list[dict[str, bytes]]:
    """Every task's merged weights, as raw bytes."""
    return [{k: v.contiguous().numpy().tobytes() for k, v in result.weights.task_state_dict(i).items()}
            for i in range(len(result.parents))]


def same_transforms(a, b) -> bool:
    return a.keys() == b.keys() and all(
        a[n].k == b[n].k and len(a[n].assign) == len(b[n].assign)
        and all(torch.equal(x, y) for x, y in zip(a[n].assign, b[n].assign)) for n in a)


@pytest.mark.parametrize("method,extra", [("mudsc", {}), ("zipit", {"zip_budget": 0.2, "zip_decay": 0.5})])
def test_same_inputs_and_seed_give_identical_transforms_weights_and_report(method, extra):
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    runs = [MuDSCMerger.from_pretrained([a, b], method, seed=3, **extra).merge(calibration(a), num_samples=32,
                                                                                progress=False)
            for _ in range(2)]
    assert same_transforms(runs[0].transforms, runs[1].transforms)
    assert not all(t.is_permutation() and torch.equal(t.assign[1], torch.arange(t.k))
                   for t in runs[0].transforms.values())  # a real alignment, not the identity
    assert merged_bytes(runs[0]) == merged_bytes(runs[1])
    assert runs[0].report == runs[1].report


@pytest.mark.parametrize("settings", [
    {"alpha": 0.0},
    {"alpha": 1.0},
    {"mode": "zip", "alpha": 0.25, "zip_budget": 0.5, "zip_decay": 0.7},
    {"mode": "zip", "merge_layers": 1},
])
def test_resolve_gives_what_a_fresh_merger_with_those_settings_gives(settings):
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    data = calibration(a)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", mode="permute", seed=5)
    merger.collect(data, num_samples=32, progress=False)
    first, _ = merger.solve(progress=False)
    again, report = merger.solve(progress=False, **settings)
    fresh = MuDSCMerger.from_pretrained([a, b], "mudsc", seed=5, **{"mode": "permute", **settings})
    fresh.collect(data, num_samples=32, progress=False)
    expected, expected_report = fresh.solve(progress=False)
    assert same_transforms(again, expected) and report == expected_report
    assert not same_transforms(again, first)  # the settings did change the solution
    assert merged_bytes(merger.merge(progress=False, **settings)) == merged_bytes(fresh.merge(progress=False))
    assert same_transforms(merger.solve(progress=False)[0], first)  # the merger's own recipe is untouched


def test_data_methods_need_data_and_weight_matching_does_not():
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    with pytest.raises(ValueError, match="needs calibration data"):
        MuDSCMerger.from_pretrained([a, b], "zipit").merge(progress=False)
    result = MuDSCMerger.from_pretrained([a, b], "weight-matching").merge(progress=False)
    assert result.calibration is None


def test_a_merge_without_data_refuses_what_would_silently_differ_from_the_collected_data():
    """num_samples without data; auto after a collect() that held nothing out; a seed that would draw
    other rows for the repairs: each a ValueError that says what to do (were: ignored, or a message
    about missing data)."""
    from datasets import Dataset

    a, b = tiny_model("vit-cls", seed=0, num_channels=3), tiny_model("vit-cls", seed=1, num_channels=3)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", max_sweeps=1)
    rows = Dataset.from_dict({"pixel_values": torch.randn(16, 3, 16, 16, dtype=torch.float64).numpy()})
    merger.collect(rows, num_samples=16, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="num_samples counts the rows drawn from the data given with it"):
        merger.merge(num_samples=8, progress=False)
    with pytest.raises(ValueError, match="held out of the statistics, which collect\\(\\) kept none of"):
        merger.merge(method="auto", progress=False)
    with pytest.raises(ValueError, match="seed=1 would draw other calibration rows than the collected ones"):
        merger.merge(method="weight-matching", repair="heads", seed=1, progress=False)
    assert merger.merge(method="weight-matching", repair="heads", progress=False).repairs[0]["samples"] == 16


@pytest.mark.parametrize("heads", [dict(num_labels=1, problem_type="regression"),
                                   dict(num_labels=3, problem_type="multi_label_classification"),
                                   dict(num_labels=1)],  # one label: regression when trained
                         ids=["regression", "multi-label", "one label"])
def test_heads_without_single_label_classes_form_no_joint_model(tmp_path, heads):
    """A joint model takes log-softmax per task: a regression head's single logit would read 0 for any
    input, sigmoid outputs a softmax. Their merge has task models only (a classifier beside them too)."""
    a = tiny_model("bert-seq", seed=0, dtype=torch.float32, **heads)
    b = tiny_model("bert-seq", seed=1, dtype=torch.float32, num_labels=2)
    for pair in ([a, tiny_model("bert-seq", seed=1, dtype=torch.float32, **heads)], [b, a]):
        result = MuDSCMerger.from_pretrained(pair, "weight-matching").merge(progress=False)
        with pytest.raises(ValueError, match="form no joint model: use result.task_models"):
            result.model
        out = result.save_pretrained(tmp_path / f"merged{len(list(tmp_path.iterdir()))}")
        assert not (out / "config.json").exists() and (out / "tasks" / "1" / "config.json").exists()
        assert result.task_models[pair.index(a)].config.problem_type == heads.get("problem_type")


def test_in_memory_parents_are_named_as_such_not_as_hub_ids(tmp_path):
    a, b = tiny_model("vit-cls", seed=0, dtype=torch.float32), tiny_model("vit-cls", seed=1, dtype=torch.float32)
    result = MuDSCMerger.from_pretrained([a, b], "weight-matching").merge(progress=False)
    assert [p.name for p in result.parents] == ["in-memory ViTForImageClassification"] * 2
    result.save_pretrained(tmp_path / "merged")
    from huggingface_hub import ModelCard

    assert not ModelCard.load(tmp_path / "merged" / "README.md").data.base_model  # not a class name


def test_average_is_plain_averaging():
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    result = MuDSCMerger.from_pretrained([a, b], "average").merge(progress=False)
    name = "vit.layers.1.attention.q_proj.weight"
    torch.testing.assert_close(result.weights.shared[name], (a.get_parameter(name) + b.get_parameter(name)) / 2)


def test_partial_merge_keeps_later_layers_per_task():
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "activation-matching", merge_layers=1)
    result = merger.merge(calibration(a), num_samples=32, progress=False)
    assert [r["space"] for r in result.report] == ["residual", "layer.0.qk", "layer.0.vo", "layer.0.ffn"]
    assert "vit.layers.1.mlp.fc1.weight" in result.weights.private[1]
    assert "vit.layers.0.mlp.fc1.weight" in result.weights.shared
    x = tiny_inputs(a)
    assert outputs(result.task_models[1], x).shape == outputs(b, x).shape


def test_parents_are_checked_before_any_forward_pass():
    with pytest.raises(ParentError, match="at least two parents"):
        MuDSCMerger.from_pretrained([tiny_model("vit-cls")])
    with pytest.raises(ParentError, match="different families"):
        MuDSCMerger.from_pretrained([tiny_model("vit-cls"), tiny_model("bert-seq")])
    with pytest.raises(ParentError, match="different attention head sizes"):
        MuDSCMerger.from_pretrained([tiny_model("vit-cls"), tiny_model("vit-cls", num_attention_heads=2)])
    with pytest.raises(ConfigError, match="exceeds the parents' 2 layers"):
        MuDSCMerger.from_pretrained([tiny_model("vit-cls"), tiny_model("vit-cls", seed=1)], merge_layers=3)


def test_memory_budget_splits_the_statistics_into_passes_with_the_same_result():
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    one = MuDSCMerger.from_pretrained([a, b], "zipit")
    one.collect(calibration(a), num_samples=32, progress=False)
    # the largest space (FFN, 2 x 64 units) needs 8 * 128^2 bytes; allow two of them per pass
    budget = 2 * 8 * 128**2
    assert len(plan_space_groups(one.unit_maps, budget)) > 1
    several = MuDSCMerger.from_pretrained([a, b], "zipit")
    several.collect(calibration(a), num_samples=32, progress=False, memory_budget_gb=budget / 2**30)
    assert one._activation.keys() == several._activation.keys()
    for name, corr in one._activation.items():
        assert np.array_equal(np.asarray(corr), np.asarray(several._activation[name])), name


@pytest.mark.parametrize("settings", [{"alpha": 0.0}, {"mode": "zip", "alpha": 0.5}, {"mode": "permute", "alpha": 0.5}])
def test_kept_correlations_in_blocks_solve_as_whole_matrices(monkeypatch, settings):
    """The merger keeps each space's correlation as its upper blocks (here forced to several per
    space), on disk; a solve reading them gives the transforms and report of one reading whole
    matrices in memory."""
    import hf_mudsc.statistics.moments as moments
    from hf_mudsc.statistics import SymmetricBlocks

    monkeypatch.setattr(moments, "BLOCK", 7)
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", seed=2, **settings)
    merger.collect(calibration(a), num_samples=32, progress=False)
    assert all(len(c.edges) > 3 for c in merger._activation.values())
    assert all(isinstance(block, np.memmap) for c in merger._activation.values() for block in c._blocks.values())
    blocked, blocked_report = merger.solve(progress=False)
    merger._activation = {name: SymmetricBlocks({(0, 0): np.asarray(c)}, [0, len(c)])
                          for name, c in merger._activation.items()}
    whole, whole_report = merger.solve(progress=False)
    assert same_transforms(blocked, whole) and blocked_report == whole_report


def test_a_model_given_twice_is_merged_as_two_parents():
    """One loaded model object in two places is merged as two copies: its statistics count each
    sample once per parent (were observed twice per batch: doubled counts, or for three parents an
    internal error), and the merge equals that of two separate copies."""
    import copy

    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    calib = [tiny_inputs(a, batch=8, seed=300 + i) for i in range(3)]
    twice = MuDSCMerger.from_pretrained([a, a], "zipit").merge(calib, num_samples=24, progress=False)
    apart = MuDSCMerger.from_pretrained([a, copy.deepcopy(a)], "zipit").merge(calib, num_samples=24, progress=False)
    assert twice.calibration["samples_per_space"] == apart.calibration["samples_per_space"]
    x = tiny_inputs(a, seed=99)
    torch.testing.assert_close(outputs(twice.task_models[0], x), outputs(a, x), atol=1e-6, rtol=0)
    three = MuDSCMerger.from_pretrained([a, b, a], "zipit").merge(calib, num_samples=24, progress=False)
    assert len(three.task_models) == 3

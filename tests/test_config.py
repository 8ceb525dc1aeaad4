"""MergeConfig: presets, validation up front, JSON round trip."""
from __future__ import annotations

import pytest

from hf_mudsc.config import ConfigError, MergeConfig


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="nope"), "unknown method 'nope'"),
    (dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
    (dict(alpha=-0.1), r"alpha must be in \[0, 1\]"),
    (dict(method="zipit", alpha=0.5), "method 'zipit' uses alpha=0.0"),
    (dict(method="weight-matching", mode="zip"), "uses mode 'permute'"),
    (dict(mode="shuffle"), "mode must be 'permute' or 'zip'"),
    (dict(zip_budget=2.0), r"zip_budget must be in \[0, 1\]"),
    (dict(zip_decay=-1.0), r"zip_decay must be in \[0, 1\]"),
    (dict(merge_layers=-1), "merge_layers must be a non-negative integer"),
    (dict(max_sweeps=0), "max_sweeps must be a positive integer"),
    (dict(tol=1.0), r"tol must be in \[0, 1\)"),
    (dict(tol=-1e-3), r"tol must be in \[0, 1\)"),
    (dict(tol=float("nan")), r"tol must be in \[0, 1\)"),
    (dict(tol=True), r"tol must be in \[0, 1\)"),
    (dict(max_tokens_per_batch=0), "max_tokens_per_batch must be a positive integer"),
    (dict(alpha=True), r"alpha must be in \[0, 1\], got True"),  # a bool is no number here
    (dict(merge_layers=True), "merge_layers must be a non-negative integer"),
    (dict(max_sweeps=True), "max_sweeps must be a positive integer"),
    (dict(max_tokens_per_batch=True), "max_tokens_per_batch must be a positive integer"),
    (dict(repair_tokens_per_batch=0), "repair_tokens_per_batch must be a positive integer"),
    (dict(repair_tokens_per_batch=2.5), "repair_tokens_per_batch must be a positive integer"),
    (dict(repair_tokens_per_batch=True), "repair_tokens_per_batch must be a positive integer"),
    (dict(alpha=float("inf")), r"alpha must be in \[0, 1\]"),
    (dict(alpha="0.5"), r"alpha must be in \[0, 1\], got '0.5'"),
    (dict(residual_layers="0,1"), "residual_layers must be a non-empty list of layer indices, got '0,1'"),
    (dict(residual_layers=3), "residual_layers must be a non-empty list of layer indices"),
    (dict(residual_layers=[0.7]), "residual_layers must be a non-empty list of layer indices"),  # was cut to [0]
    (dict(residual_layers=[]), "residual_layers must be a non-empty list of layer indices"),  # failed in the merge
])
def test_out_of_range_parameters_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MergeConfig(**kwargs)


def test_presets_resolve_mode_and_alpha():
    assert (MergeConfig().resolved_mode, MergeConfig().resolved_alpha) == ("zip", 0.5)
    wm = MergeConfig(method="weight-matching")
    assert (wm.resolved_mode, wm.resolved_alpha, wm.needs_data) == ("permute", 1.0, False)
    assert MergeConfig(method="zipit").needs_data
    assert not MergeConfig(method="average").needs_data
    assert not MergeConfig(alpha=1.0).needs_data


def test_depth_checked_against_the_parents():
    with pytest.raises(ConfigError, match="merge_layers=7 exceeds the parents' 6 layers"):
        MergeConfig(merge_layers=7).check_depth(6)
    MergeConfig(merge_layers=6).check_depth(6)


def test_round_trip(tmp_path):
    config = MergeConfig(method="mudsc", mode="permute", alpha=0.25, merge_layers=3, residual_layers=(0, 2))
    config.save_pretrained(tmp_path)
    assert MergeConfig.from_pretrained(tmp_path) == config
    with pytest.raises(ConfigError, match="unknown merge settings: bogus"):
        MergeConfig.from_dict({"bogus": 1})


def test_numpy_numbers_are_taken_as_python_ones(tmp_path):
    """numpy integers (a loop over np.arange, a value read from an array) are integers: accepted and
    kept as Python ints, so the recipe saves as JSON (they were refused: "must be a positive integer, got 64")."""
    import numpy as np

    config = MergeConfig(merge_layers=np.int64(1), max_tokens_per_batch=np.int64(64), statistics_samples=np.int32(8),
                         max_sweeps=np.int64(2), residual_layers=np.arange(2), seed=np.uint64(3), alpha=np.float32(0.5))
    assert config.merge_layers == 1 and type(config.merge_layers) is int
    assert type(config.max_tokens_per_batch) is int and type(config.statistics_samples) is int
    assert config.residual_layers == (0, 1) and type(config.seed) is int
    config.save_pretrained(tmp_path)
    assert MergeConfig.from_pretrained(tmp_path) == config

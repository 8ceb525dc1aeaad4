"""Coordinate descent: the start is a candidate, sweeps are scored consistently, settings come from the config."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hf_mudsc.config import MergeConfig
from hf_mudsc.solve.descent import SolveSettings, coordinate_descent
from hf_mudsc.transforms import SpaceTransform
from hf_mudsc.unitmaps.spaces import MergeSpace


def two_by_two(cross: np.ndarray) -> np.ndarray:
    """Similarity of 2 models x 2 units with the given cross-model block."""
    return np.block([[np.eye(2), cross], [cross.T, np.eye(2)]])


IDENTITY = np.eye(2)


def test_descent_keeps_its_start_when_the_sweeps_are_worse():
    """Space 'a' alone prefers the swap (blend 0.3 against 0.2), but swapping it ruins 'b'
    (1.0 -> 0.0): the start scores 0.6, the sweep 0.15, so the start is returned. Scored at
    solve time (b solved before a swaps), the sweep would read 0.65 and win."""
    spaces = (MergeSpace("a", 2, ()), MergeSpace("b", 2, ()))
    activation = {"a": two_by_two(IDENTITY), "b": two_by_two(IDENTITY)}

    class WeightSim:  # the descent's protocol: whole matrices, and their entries
        def __call__(self, name, transforms, aligned, out=None):
            return weight_matrix(name, transforms)

        def entries(self, name, transforms, rows, cols):
            return weight_matrix(name, transforms)[rows, cols]

        def dependencies(self, name):
            return {"a"} if name == "b" else set()

    def weight_matrix(name, transforms):
        if name == "a":
            return two_by_two(np.array([[-0.6, 0.6], [0.6, -0.6]]))
        a_is_identity = bool((transforms["a"].assign[1] == transforms["a"].assign[0]).all())
        return two_by_two(np.array([[1.0, -1.0], [-1.0, 1.0]]) if a_is_identity else -np.ones((2, 2)))

    settings = SolveSettings.from_config(MergeConfig(method="mudsc", mode="permute", alpha=0.5, max_sweeps=3))
    start = {s.name: SpaceTransform.identity([2, 2]) for s in spaces}
    result = coordinate_descent([(s,) for s in spaces], {"a": [2, 2], "b": [2, 2]}, settings, activation,
                                WeightSim(), start)
    assert result.history[0] == pytest.approx(0.6) and result.history[1] == pytest.approx(0.15)
    assert len(result.history) == 2  # patience 1: one sweep without gain ends the descent
    assert all(t.assign[1].tolist() == [0, 1] for t in result.transforms.values())
    assert result.objectives == pytest.approx({"a": 0.2, "b": 1.0})
    assert result.weight_objectives == pytest.approx({"a": -0.6, "b": 1.0})


# the start's score, then each sweep's: gains of 5e-4, 1.5e-3, then 5e-5, 8e-5, 9e-5 over the best (1.002)
SCORES = [1.0, 1.0005, 1.002, 1.00205, 1.00208, 1.00209]


@pytest.mark.parametrize("tol,sweeps,best", [
    (1e-3, 1, 1.0005),  # the first sweep gains less than tol: it stops there, and its result is kept (> MIN_GAIN)
    (1e-4, 3, 1.002),  # the third sweep gains less than tol (and than MIN_GAIN: not kept)
    (0.0, 5, 1.002),  # every sweep gains: max_sweeps; gains below MIN_GAIN never replace the best
])
def test_tol_ends_the_descent_and_min_gain_keeps_the_best(monkeypatch, tol, sweeps, best):
    import hf_mudsc.solve.descent as descent

    scores = iter(SCORES)
    monkeypatch.setattr(descent, "_scored", lambda names, transforms, *rest: descent.DescentResult(
        dict(transforms), {"all": next(scores)}))
    monkeypatch.setattr(descent, "same", lambda a, b: False)  # no sweep is skipped as a fixed point
    spaces = (MergeSpace("a", 2, ()), MergeSpace("b", 2, ()))

    class WeightSim:
        def __call__(self, name, transforms, aligned, out=None):
            return two_by_two(np.array([[0.5, 0.1], [0.1, 0.5]]))

        def dependencies(self, name):
            return {"a", "b"}

    settings = SolveSettings.from_config(MergeConfig(method="mudsc", mode="permute", alpha=0.5, max_sweeps=5,
                                                     patience=1, tol=tol))
    activation = {"a": two_by_two(IDENTITY), "b": two_by_two(IDENTITY)}
    result = coordinate_descent([(s,) for s in spaces], {"a": [2, 2], "b": [2, 2]}, settings, activation,
                                WeightSim(), {s.name: SpaceTransform.identity([2, 2]) for s in spaces})
    assert result.history == SCORES[:1 + sweeps]
    assert result.objectives == {"all": best}


def test_solve_settings_come_from_the_config_alone():
    config = MergeConfig(method="mudsc", mode="zip", alpha=0.3, zip_budget=0.1, zip_decay=0.5,
                         max_sweeps=7, patience=2, tol=0.01, seed=5)
    settings = SolveSettings.from_config(config)
    assert dataclasses.astuple(settings) == ("zip", 0.3, 0.1, 0.5, 7, 2, 0.01, 5)
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(SolveSettings))
    assert settings.reads_within(2) and not dataclasses.replace(settings, zip_budget=0.0).reads_within(2)
    assert dataclasses.replace(settings, zip_budget=0.0).reads_within(3)
    assert not dataclasses.replace(settings, mode="permute").reads_within(3)


def test_units_whose_neighbours_did_not_change_are_not_solved_again(monkeypatch):
    """Skipping a unit whose weight similarity is unchanged since its last solve is exact: the
    descent returns what it returns when every unit is solved in every sweep, with fewer solves."""
    import torch

    import hf_mudsc.solve.descent as descent
    from conftest import tiny_inputs, tiny_model
    from hf_mudsc import MuDSCMerger
    from hf_mudsc.similarity import WeightSimilarity

    a, b = tiny_model("bert-seq", seed=0, dtype=torch.float32), tiny_model("bert-seq", seed=1, dtype=torch.float32)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", max_sweeps=4, patience=4)
    merger.collect([tiny_inputs(a, batch=8, seed=200 + i) for i in range(4)], num_samples=32, progress=False)
    calls: list[str] = []
    original = descent.solve_unit

    def counted(unit, *args):
        calls.append(unit[0].name)
        return original(unit, *args)

    monkeypatch.setattr(descent, "solve_unit", counted)
    fast, fast_report = merger.solve(progress=False)
    skipping = len(calls)
    calls.clear()
    everything = set(merger.unit_maps[0].space_names)
    monkeypatch.setattr(WeightSimilarity, "dependencies", lambda self, space: everything)
    slow, slow_report = merger.solve(progress=False)
    assert all(torch.equal(x, y) for n in fast for x, y in zip(fast[n].assign, slow[n].assign))
    assert fast_report == slow_report
    assert skipping < len(calls)


@pytest.mark.parametrize("settings", [{"alpha": 0.0}, {"mode": "zip", "alpha": 0.5}, {"mode": "permute", "alpha": 0.5}])
def test_reused_scratch_matrices_solve_as_new_ones(monkeypatch, settings):
    """The descent reuses one matrix per slot for spaces of every size (views of the widest); a solve
    with a new NaN-filled matrix for every request (an entry left unwritten would show) is the same."""
    import hf_mudsc.solve.descent as descent
    from conftest import tiny_inputs, tiny_model
    from hf_mudsc import MuDSCMerger

    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", seed=2, max_sweeps=2, **settings)
    merger.collect([tiny_inputs(a, batch=8, seed=300 + i) for i in range(4)], num_samples=32, progress=False)
    assert len({merger.unit_maps[0][n].dim for n in merger.merged_spaces()}) > 1  # spaces of several sizes
    reused, reused_report = merger.solve(progress=False)
    monkeypatch.setattr(descent.Scratch, "matrix", lambda self, slot, side: np.full((side, side), np.nan))
    new, new_report = merger.solve(progress=False)
    assert all(np.array_equal(x, y) for n in reused for x, y in zip(reused[n].assign, new[n].assign))
    assert reused_report == new_report

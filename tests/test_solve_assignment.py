"""Permutation mode: linear assignment of every model to a reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_mudsc.solve import Solution, pair_objective, solve_permute


def corr(*features: np.ndarray) -> np.ndarray:
    return np.corrcoef(np.vstack(features))


def check_valid(sol: Solution, sizes: list[int]) -> None:
    """Labels in [0, k), every merged unit used, one unit per model per merged unit."""
    assert sol.k == max(sizes)
    assert np.array_equal(sol.assign[0][: sizes[0]], np.arange(sizes[0]))
    for a, d in zip(sol.assign, sizes):
        assert a.dtype == np.int64 and a.shape == (d,)
        assert len(np.unique(a)) == d and a.min() >= 0 and a.max() < sol.k
    assert set(np.concatenate(sol.assign)) == set(range(sol.k))


def test_recovers_planted_permutation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 300))
    perm = rng.permutation(40)
    sol = solve_permute(corr(x, x[perm] + 0.3 * rng.normal(size=x.shape)), [40, 40])
    check_valid(sol, [40, 40])
    assert np.array_equal(sol.assign[0], np.arange(40))
    assert np.array_equal(sol.assign[1], perm)


def test_three_models_each_matched_to_model_0() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 200))
    p1, p2 = rng.permutation(25), rng.permutation(25)
    sol = solve_permute(corr(x, x[p1], x[p2] + 0.2 * rng.normal(size=x.shape)), [25] * 3)
    assert np.array_equal(sol.assign[1], p1) and np.array_equal(sol.assign[2], p2)


def test_identical_models_give_identity() -> None:
    x = np.random.default_rng(2).normal(size=(30, 100))
    sol = solve_permute(corr(x, x), [30, 30])
    assert np.array_equal(sol.assign[0], np.arange(30))
    assert np.array_equal(sol.assign[1], np.arange(30))
    assert sol.objective == pytest.approx(1.0)


def test_narrower_second_model() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 200))
    pick = rng.permutation(10)[:6]
    sol = solve_permute(corr(x, x[pick]), [10, 6])
    check_valid(sol, [10, 6])
    assert np.array_equal(sol.assign[1], pick)


def test_narrower_first_model_keeps_its_order_and_extra_units_follow() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=(10, 200))
    pick = np.array([7, 2, 9, 0, 4, 5])
    sol = solve_permute(corr(y[pick], y), [6, 10])
    check_valid(sol, [6, 10])
    assert np.array_equal(sol.assign[0], np.arange(6))
    expected = np.empty(10, dtype=np.int64)
    expected[pick] = np.arange(6)
    expected[[1, 3, 6, 8]] = [6, 7, 8, 9]  # unmatched units of model 1, in its order
    assert np.array_equal(sol.assign[1], expected)


def test_objective_is_mean_of_matched_pairs() -> None:
    rng = np.random.default_rng(5)
    sim = rng.normal(size=(8, 8))
    sol = solve_permute(sim, [4, 4])
    matched = [(j, 4 + int(np.flatnonzero(sol.assign[1] == sol.assign[0][j])[0]))
               for j in range(4)]
    expected = np.mean([(sim[u, v] + sim[v, u]) / 2 for u, v in matched])
    assert sol.objective == pytest.approx(expected)
    assert sol.objective == pytest.approx(pair_objective(sim, sol.labels()))


def test_torch_input_and_determinism() -> None:
    sim = np.random.default_rng(6).normal(size=(12, 12))
    a, b = solve_permute(torch.tensor(sim), [6, 6]), solve_permute(sim, [6, 6])
    assert all(np.array_equal(x, y) for x, y in zip(a.assign, b.assign))


@pytest.mark.parametrize("sim, sizes", [(np.zeros((5, 5)), [3, 3]),
                                        (np.zeros((4, 3)), [2, 2]),
                                        (np.full((4, 4), np.nan), [2, 2]),
                                        (np.zeros((4, 4)), [4, 0])])
def test_bad_input_raises(sim: np.ndarray, sizes: list[int]) -> None:
    with pytest.raises(ValueError):
        solve_permute(sim, sizes)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=3), st.integers(0, 2**32 - 1))
def test_valid_on_random_inputs(sizes: list[int], seed: int) -> None:
    sim = np.round(np.random.default_rng(seed).normal(size=(sum(sizes),) * 2), 1)
    check_valid(solve_permute(sim, sizes), sizes)

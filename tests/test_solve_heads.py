"""Attention head groups: one head assignment for all spaces, solves inside heads."""
from __future__ import annotations

import numpy as np
import pytest

from hf_mudsc.solve import Solution, pair_objective, solve_heads

HD = 6  # head_dim


def planted(rng: np.random.Generator, heads: int, head_perm: np.ndarray,
            noise: float = 0.05) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two spaces; model 1's head b is model 0's head ``head_perm[b]`` with its units
    permuted by a different permutation per space and per head. Returns the similarity
    matrices and, per space, the merged unit expected for each unit of model 1."""
    sims, expected = [], []
    for _ in range(2):
        x = rng.normal(size=(heads * HD, 120))
        src = np.concatenate([head_perm[b] * HD + rng.permutation(HD) for b in range(heads)])
        y = x[src] + noise * rng.normal(size=x.shape)
        sims.append(np.corrcoef(np.vstack([x, y])))
        expected.append(src)
    return sims, expected


def head_of(sol: Solution, model: int, heads: int) -> np.ndarray:
    """Merged head of every head of ``model``; asserts a head never straddles two."""
    per_head = sol.assign[model].reshape(heads, HD) // HD
    assert np.all(per_head == per_head[:, :1])
    return per_head[:, 0]


@pytest.mark.parametrize("mode", ["permute", "zip"])
def test_recovers_planted_heads_and_units(mode: str) -> None:
    rng = np.random.default_rng(0)
    head_perm = rng.permutation(5)
    sims, expected = planted(rng, 5, head_perm)
    sols = solve_heads(sims, [5 * HD] * 2, 5, HD, mode)
    for sol, sim, exp in zip(sols, sims, expected):
        assert sol.k == 5 * HD
        assert np.array_equal(sol.assign[0], np.arange(5 * HD))
        assert np.array_equal(sol.assign[1], exp)
        assert sol.objective == pytest.approx(pair_objective(sim, sol.labels()))


def test_spaces_share_one_head_assignment_decided_by_the_sum() -> None:
    rng = np.random.default_rng(1)
    head_perm = np.array([2, 0, 3, 1])
    sims, _ = planted(rng, 4, head_perm)
    sims[0] = np.corrcoef(rng.normal(size=(8 * HD, 50)))  # space 0 carries no head signal
    for sol in solve_heads(sims, [4 * HD] * 2, 4, HD, "permute"):
        assert np.array_equal(head_of(sol, 1, 4), head_perm)


@pytest.mark.parametrize("models", [2, 3, 4])
@pytest.mark.parametrize("budget, decay", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_zip_never_mixes_heads(models: int, budget: float, decay: float) -> None:
    rng = np.random.default_rng(2)
    n = 12 * models
    sims = [np.round(rng.uniform(-1, 1, size=(n, n)), 1) for _ in range(2)]  # many exact ties
    sols = solve_heads(sims, [12] * models, 2, HD, "zip", budget, decay)
    for model in range(1, models):
        heads = [head_of(sol, model, 2) for sol in sols]
        assert np.array_equal(heads[0], heads[1])
    for sol in sols:
        assert np.array_equal(head_of(sol, 0, 2), [0, 1])
        assert set(sol.labels()) == set(range(12))
        for a in sol.assign:  # within every head, each model keeps its budget
            for h in range(2):
                merged = len(np.unique(a[h * HD:(h + 1) * HD]))
                assert HD - merged <= np.floor(budget * HD + 1e-9)


@pytest.mark.parametrize("mode", ["permute", "zip"])
def test_identical_models_give_identity(mode: str) -> None:
    x = np.random.default_rng(3).normal(size=(3 * HD, 60))
    sim = np.tile(np.corrcoef(x), (2, 2))  # identical parents, exact by construction
    for sol in solve_heads([sim, sim], [3 * HD] * 2, 3, HD, mode, budget=0.5, decay=0.5):
        assert np.array_equal(sol.assign[0], np.arange(3 * HD))
        assert np.array_equal(sol.assign[1], np.arange(3 * HD))


@pytest.mark.parametrize("mode", ["permute", "zip"])
def test_three_models(mode: str) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2 * HD, 80))
    swap = np.r_[HD:2 * HD, 0:HD]
    rows = np.r_[0:2 * HD, swap, 0:2 * HD]  # parents x, x[swap], x: exact copies by construction
    sim = np.corrcoef(x)[np.ix_(rows, rows)]
    sol = solve_heads([sim], [2 * HD] * 3, 2, HD, mode)[0]
    assert np.array_equal(sol.assign[1], swap) and np.array_equal(sol.assign[2], np.arange(12))


@pytest.mark.parametrize("mode", ["permute", "zip"])
def test_different_head_counts(mode: str) -> None:
    rng = np.random.default_rng(5)
    corr = np.corrcoef(rng.normal(size=(3 * HD, 80)))
    large, small = np.r_[0:3 * HD], np.r_[2 * HD:3 * HD, 0:HD]  # the small model: heads 2 and 0 of the large
    # Merged heads follow model 0's heads; the unmatched head of the larger model is last.
    for parts, heads, expected in [((large, small), [3, 2], ([0, 1, 2], [2, 0])),
                                   ((small, large), [2, 3], ([0, 1], [1, 2, 0]))]:
        rows = np.concatenate(parts)
        sim = corr[np.ix_(rows, rows)]  # copied units are exact copies
        sol = solve_heads([sim], [h * HD for h in heads], heads, HD, mode)[0]
        assert sol.k == 3 * HD and set(sol.labels()) == set(range(3 * HD))
        assert np.array_equal(sol.assign[0], np.arange(heads[0] * HD))
        assert sol.objective == pytest.approx(1.0)
        for model in (0, 1):
            assert np.array_equal(head_of(sol, model, heads[model]), expected[model])


@pytest.mark.parametrize("kwargs", [{"num_heads": 3}, {"num_heads": [2, 3]},
                                    {"mode": "average"}, {"sims": []}])
def test_bad_arguments_raise(kwargs: dict) -> None:
    args = {"sims": [np.eye(24)], "sizes": [12, 12], "num_heads": 2, "head_dim": HD,
            "mode": "permute"} | kwargs
    with pytest.raises(ValueError):
        solve_heads(**args)

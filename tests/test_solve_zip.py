"""Zip mode: the fast greedy solver against the plain O(n^3) loop, and the rule itself."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import benchmark_module
from hf_mudsc import MergeQualityWarning
from hf_mudsc.solve import Solution, pair_objective, solve_heads, solve_permute, solve_zip
from hf_mudsc.solve.solution import canonical_labels

reference_zip = benchmark_module("reference_zip", "benchmarks/speed/reference_zip.py").reference_zip


def caps(sizes: list[int], budget: float) -> np.ndarray:
    return np.floor(budget * np.asarray(sizes, dtype=np.float64) + 1e-9)


def check_valid(sol: Solution, sizes: list[int], k: int, budget: float) -> None:
    """Labels in [0, k), every merged unit used, canonical order; a model's budget is exceeded
    exactly when no partition into ``k`` units respects it, and ``over_budget`` says so."""
    labels = sol.labels()
    assert sol.k == k and labels.dtype == np.int64
    assert [len(a) for a in sol.assign] == sizes
    assert set(labels) == set(range(k))
    _, first = np.unique(labels, return_index=True)
    assert np.all(np.diff(first) > 0)  # merged units sorted by their smallest member
    feasible = np.asarray(sizes) - k <= caps(sizes, budget)
    for m, (a, d) in enumerate(zip(sol.assign, sizes)):
        assert (d - len(np.unique(a)) <= caps(sizes, budget)[m]) == bool(feasible[m])
    assert list(sol.over_budget) == [int(m) for m in np.flatnonzero(~feasible)]


def same_as_reference(sim: np.ndarray, sizes: list[int], k: int | None, budget: float,
                      decay: float) -> bool:
    """Same partition of the units as the plain loop."""
    ref = np.concatenate(reference_zip(sim, sizes, k, budget, decay))
    ours = solve_zip(sim, sizes, k, budget, decay).labels()
    return np.array_equal(canonical_labels(ref), ours)


@pytest.mark.parametrize("seed", range(8))
def test_equals_plain_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(25):
        sizes = [int(s) for s in rng.integers(1, 11, size=rng.integers(2, 4))]
        sim = rng.normal(size=(sum(sizes),) * 2)
        sim = sim + sim.T if rng.random() < 0.7 else sim  # some asymmetric inputs
        sim = np.round(sim, int(rng.integers(0, 2)))  # many ties
        k = None if rng.random() < 0.5 else int(rng.integers(1, sum(sizes) + 1))
        budget = float(rng.choice([0.0, 0.2, 0.5, 1.0]))
        decay = float(rng.choice([0.0, 0.5, 1.0]))
        assert same_as_reference(sim, sizes, k, budget, decay), (sizes, k, budget, decay)


def test_equals_plain_loop_on_correlations() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(40, 60))
    sim = np.corrcoef(np.vstack([x, x[rng.permutation(40)] + rng.normal(size=x.shape)]))
    for budget in (0.0, 0.3):
        for decay in (0.0, 0.4, 1.0):
            assert same_as_reference(sim, [40, 40], None, budget, decay)


@pytest.mark.parametrize("rows", [1, 3])
def test_stale_rows_re_read_in_any_chunks_equal_plain_loop(rows: int, monkeypatch) -> None:
    """The greedy re-reads stale rows a few at a time: chunk boundaries anywhere (a budget
    running out makes dozens of rows stale at once) give the plain loop's partition."""
    monkeypatch.setattr("hf_mudsc.solve.zip._RECOMPUTE_ROWS", rows)
    rng = np.random.default_rng(5)
    for sizes in ([30, 30], [20, 20, 20]):
        sim = rng.normal(size=(sum(sizes),) * 2)
        for budget in (0.1, 0.5):
            for decay in (0.5, 1.0):
                assert same_as_reference(sim + sim.T, sizes, None, budget, decay), (sizes, budget, decay)


@pytest.mark.parametrize("seed", range(4))
def test_symmetric_input_skips_the_symmetrising_with_the_same_solution(seed: int) -> None:
    """``symmetric=True`` reads ``sim`` itself for ``(sim + sim.T) / 2``: on an exactly symmetric
    matrix (ties included) that is the same key, so the same solution, with the fallbacks too."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        sizes = [int(s) for s in rng.integers(1, 11, size=rng.integers(2, 4))]
        sim = rng.normal(size=(sum(sizes),) * 2)
        sim = np.round((sim + sim.T) / 2, int(rng.integers(0, 3)))
        k = None if rng.random() < 0.5 else int(rng.integers(1, sum(sizes) + 1))
        budget, decay = float(rng.choice([0.0, 0.2, 0.5])), float(rng.choice([0.0, 0.5, 1.0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MergeQualityWarning)
            plain, fast = (solve_zip(sim, sizes, k, budget, decay, symmetric=flag) for flag in (False, True))
        assert np.array_equal(plain.labels(), fast.labels()) and plain.objective == fast.objective


@pytest.mark.parametrize("symmetric", [False, True])
def test_a_given_work_matrix_gives_the_same_solution(symmetric: bool) -> None:
    """``work`` (dirty, as the descent reuses it) gives the solution of a new one, the fallbacks
    included (k = 2 of 4 + 4 + 4 units with a budget gets stuck); it may not be ``sim`` itself."""
    rng = np.random.default_rng(5)
    for sizes, k in (([30, 30], None), ([4, 4, 4], 2)):
        sim = rng.normal(size=(sum(sizes),) * 2)
        sim = (sim + sim.T) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MergeQualityWarning)
            new = solve_zip(sim, sizes, k, 0.2, 0.5, symmetric=symmetric)
            given = solve_zip(sim, sizes, k, 0.2, 0.5, symmetric=symmetric, work=np.full_like(sim, np.nan))
        assert np.array_equal(new.labels(), given.labels()) and new.objective == given.objective
    with pytest.raises(ValueError, match="work"):
        solve_zip(sim, sizes, work=sim)


def test_symmetric_flag_refuses_an_asymmetric_matrix() -> None:
    sim = np.random.default_rng(0).normal(size=(12, 12))
    with pytest.raises(ValueError, match="not symmetric"):
        solve_zip(sim, [6, 6], symmetric=True)


def test_two_models_no_budget_pair_perfectly() -> None:
    rng = np.random.default_rng(10)
    sol = solve_zip(rng.normal(size=(24, 24)), [12, 12])
    check_valid(sol, [12, 12], 12, 0.0)
    assert np.array_equal(sol.assign[0], np.arange(12))
    assert sorted(sol.assign[1]) == list(range(12))


@pytest.mark.parametrize("budget, decay", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_identical_models_give_identity(budget: float, decay: float) -> None:
    x = np.random.default_rng(11).normal(size=(20, 80))
    sol = solve_zip(np.tile(np.corrcoef(x), (2, 2)), [20, 20], budget=budget, decay=decay)
    assert np.array_equal(sol.assign[0], np.arange(20))
    assert np.array_equal(sol.assign[1], np.arange(20))
    assert sol.objective == pytest.approx(1.0)


def _four_units() -> np.ndarray:
    sim = np.zeros((4, 4))
    for (u, v), s in {(0, 1): 0.9, (0, 2): 0.8, (1, 2): 0.7, (2, 3): 0.1}.items():
        sim[u, v] = sim[v, u] = s
    return sim


@pytest.mark.parametrize("decay, groups", [(0.0, [0, 0, 1, 1]), (0.1, [0, 0, 1, 1]),
                                           (1.0, [0, 0, 0, 1])])
def test_decay_rule(decay: float, groups: list[int]) -> None:
    # s(a,b)=.9 merges first; {a,b} to c (a same-model merge of model 1) is decay * min(.8, .7),
    # against s(c,d)=.1; decay 0 freezes {a,b}.
    sol = solve_zip(_four_units(), [1, 3], k=2, budget=1.0, decay=decay)
    assert list(sol.labels()) == groups


@pytest.mark.parametrize("decay", [0.0, 0.1, 1.0])
def test_a_pair_is_completed_by_a_third_model_without_the_decay(decay: float) -> None:
    # four models of one unit: {a,b} to c is min(.8, .7) at any decay (c's model is in neither), so
    # c joins a and b rather than d (s(c,d) = .1); with the decay c and d merged at decay 0 and 0.1.
    sol = solve_zip(_four_units(), [1, 1, 1, 1], k=2, decay=decay)
    assert list(sol.labels()) == [0, 0, 0, 1]


@pytest.mark.parametrize("budget, groups", [(0.0, [0, 1, 0]), (0.5, [0, 0, 1])])
def test_budget_rule(budget: float, groups: list[int]) -> None:
    sim = np.array([[1.0, 0.9, 0.5], [0.9, 1.0, 0.2], [0.5, 0.2, 1.0]])
    sol = solve_zip(sim, [2, 1], budget=budget)
    assert list(sol.labels()) == groups


def test_fallbacks_reach_k() -> None:
    # k = 2 < 3 units per model at budget 0: no partition respects the budgets; they give way, with a warning.
    sim = np.random.default_rng(12).normal(size=(9, 9))
    with pytest.warns(MergeQualityWarning, match="budget"):
        sol = solve_zip(sim, [3, 3, 3], k=2)
    check_valid(sol, [3, 3, 3], 2, 0.0)
    with pytest.warns(MergeQualityWarning):
        assert set(solve_zip(np.zeros((3, 3)), [3], k=1).labels()) == {0}


def test_stuck_greedy_completes_within_budgets() -> None:
    # Greedy pairs {a0, b0}, {a1, c0}, {b1, c1} (decay 0 freezes them) leave no two clusters
    # without a common model: the completion regroups them into 2 merged units of one unit per model.
    sim = np.full((6, 6), -1.0)
    for (u, v), s in {(0, 2): 0.9, (1, 4): 0.8, (3, 5): 0.7}.items():  # a = 0, 1; b = 2, 3; c = 4, 5
        sim[u, v] = sim[v, u] = s
    sol = solve_zip(sim, [2, 2, 2])
    check_valid(sol, [2, 2, 2], 2, 0.0)
    assert all(sorted(a) == [0, 1] for a in sol.assign)  # each merged unit: one unit of every model
    assert list(sol.labels()) == [0, 1, 0, 1, 1, 0]


def test_ties_broken_by_lowest_index() -> None:
    sol = solve_zip(np.zeros((4, 4)), [2, 2])
    assert list(sol.labels()) == [0, 1, 0, 1]


def test_objective_definition() -> None:
    sim = np.random.default_rng(13).normal(size=(9, 9))
    sol = solve_zip(sim, [3, 3, 3], k=2, budget=1.0, decay=1.0)
    labels = sol.labels()
    pairs = [(u, v) for u in range(9) for v in range(9) if u != v and labels[u] == labels[v]]
    assert sol.objective == pytest.approx(np.mean([sim[u, v] for u, v in pairs]))
    assert pair_objective(sim, np.arange(9)) == 0.0


def test_torch_input() -> None:
    sim = np.random.default_rng(14).normal(size=(10, 10))
    assert np.array_equal(solve_zip(torch.tensor(sim), [5, 5]).labels(),
                          solve_zip(sim, [5, 5]).labels())


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 9}, {"budget": 1.5}, {"decay": -0.1}])
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        solve_zip(np.zeros((8, 8)), [4, 4], **kwargs)


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=3),
       seed=st.integers(0, 2**32 - 1), budget=st.sampled_from([0.0, 0.1, 0.34, 0.5, 1.0]),
       decay=st.sampled_from([0.0, 0.3, 1.0]), k_frac=st.floats(0.0, 1.0))
def test_valid_and_equal_to_plain_loop(sizes: list[int], seed: int, budget: float,
                                       decay: float, k_frac: float) -> None:
    sim = np.round(np.random.default_rng(seed).uniform(-1, 1, size=(sum(sizes),) * 2), 1)
    k = max(1, round(k_frac * sum(sizes)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MergeQualityWarning)  # k below a width: budgets may not fit
        check_valid(solve_zip(sim, sizes, k, budget, decay), sizes, k, budget)
        assert same_as_reference(sim, sizes, k, budget, decay)


SIMILARITY_KINDS = ["untied", "exact ties", "near ties"]


def many_parents_similarity(rng: np.random.Generator, sizes: list[int], kind: str) -> np.ndarray:
    """Untied random similarities; exact ties (parents that are copies of one parent, and
    values on a coarse grid); or those ties blurred in the 13th digit."""
    n = sum(sizes)
    if kind == "untied":
        return rng.normal(size=(n, n))
    base = np.atleast_2d(np.corrcoef(rng.normal(size=(max(sizes), 3 * max(sizes) + 5))))
    rows = np.concatenate([rng.permutation(max(sizes))[:s] for s in sizes])
    sim = np.round(base[np.ix_(rows, rows)], 1)
    if kind == "near ties":
        noise = rng.uniform(-1e-13, 1e-13, size=(n, n))
        sim = sim + (noise + noise.T)
    return sim


@settings(max_examples=120, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=3, max_size=4), seed=st.integers(0, 2**32 - 1),
       budget=st.sampled_from([0.0, 0.0, 0.2, 0.5, 1.0]), decay=st.sampled_from([0.0, 0.5, 1.0]),
       kind=st.sampled_from(SIMILARITY_KINDS))
def test_many_parents_respect_budgets(sizes: list[int], seed: int, budget: float, decay: float,
                                      kind: str) -> None:
    """Three and four parents, k = the widest: no model exceeds its budget, whatever the ties;
    at budget 0 every merged unit holds at most one unit of each model."""
    sim = many_parents_similarity(np.random.default_rng(seed), sizes, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MergeQualityWarning)
        sol = solve_zip(sim, sizes, budget=budget, decay=decay)
    check_valid(sol, sizes, max(sizes), budget)
    assert sol.over_budget == ()
    if budget == 0:
        assert all(len(np.unique(a)) == len(a) for a in sol.assign)


@pytest.mark.parametrize("seed", range(6))
def test_near_ties_resolve_like_exact_ties(seed: int) -> None:
    """Ties blurred in the last bits (as two numpy builds may compute one correlation) give the
    solution of the exact ties, for every solver."""
    rng = np.random.default_rng(seed)
    sizes = [6, 6, 6]
    exact = many_parents_similarity(np.random.default_rng(seed), sizes, "exact ties")
    noise = rng.uniform(-1e-12, 1e-12, size=exact.shape)
    blurred = exact + noise + noise.T
    for solve in (lambda s: solve_zip(s, sizes), lambda s: solve_zip(s, sizes, budget=0.5, decay=0.5),
                  lambda s: solve_permute(s, sizes), lambda s: solve_heads([s], sizes, 2, 3, "zip")[0]):
        assert np.array_equal(solve(exact).labels(), solve(blurred).labels())

"""Weight similarity: the kept (and updated), cross-block-only computation equals a fresh full one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_inputs, tiny_model
from hf_mudsc import MuDSCMerger
from hf_mudsc.similarity import WeightSimilarity, _changed_units, weight_similarity
from hf_mudsc.transforms import SpaceTransform, identity_transforms
from hf_mudsc.unitmaps import unit_map_of

TOL = 1e-6  # float32 Gram products of standardised (O(1)) features, summed in another order


def parents(kind: str = "bert-seq"):
    models = [tiny_model(kind, seed=0, dtype=torch.float32), tiny_model(kind, seed=1, dtype=torch.float32)]
    return [unit_map_of(m) for m in models], [{n: p.detach() for n, p in m.named_parameters()} for m in models]


def shuffled(t: SpaceTransform, seed: int) -> SpaceTransform:
    g = torch.Generator().manual_seed(seed)
    return SpaceTransform((t.assign[0], t.assign[1][torch.randperm(t.k, generator=g)]), t.k)


def swapped(t: SpaceTransform, units: tuple[int, int]) -> SpaceTransform:
    """Model 1's units ``units`` trade merged units: two merged units change members."""
    b = t.assign[1].clone()
    b[list(units)] = b[list(units[::-1])]
    return SpaceTransform((t.assign[0], b), t.k)


def spied(monkeypatch, sim: WeightSimilarity, names: list[str]) -> list[tuple[str, ...]]:
    """The other spaces of every group that ``sim`` computes afresh (all of its features, not only
    changed ones) from now on; a fresh :func:`weight_similarity` is another object: not counted."""
    computed: list[tuple[str, ...]] = []
    original = WeightSimilarity._add
    deps_of = {(m.param, m.axis): deps for n in names for deps, members in sim._groups(n).items() for m in members}

    def spy(self, part, members, *args, columns=None, **kwargs):
        if self is sim and columns is None:
            computed.append(deps_of[members[0].param, members[0].axis])
        return original(self, part, members, *args, columns=columns, **kwargs)

    monkeypatch.setattr(WeightSimilarity, "_add", spy)
    return computed


def test_groups_are_kept_and_updated_by_their_changed_features_equal_to_fresh(monkeypatch):
    """Every group is computed once and kept; when the space a group reads changes in a few merged
    units, only their features are updated (no fresh computation), and when it changes in most of
    them, the group is computed afresh; the result always equals a fresh computation."""
    maps, states = parents()
    names = [s.name for s in maps[0].spaces]
    monkeypatch.setattr("hf_mudsc.similarity._CACHED_FEATURES", 1)  # keep every constant group
    cached = WeightSimilarity(maps, states)
    computed = spied(monkeypatch, cached, names)
    transforms = identity_transforms(maps)
    ffn = next(n for n in names if "ffn" in n)
    groups = [deps for n in names for deps in cached._groups(n)]
    changes = [lambda t: t, lambda t: swapped(t, (0, 1)), lambda t: shuffled(t, 0), lambda t: swapped(t, (2, 5))]
    for step, change in enumerate(changes):
        transforms = {**transforms, ffn: change(transforms[ffn])}
        fresh = {name: weight_similarity(name, maps, states, transforms) for name in names}
        computed.clear()
        for name in names:
            assert np.abs(cached(name, transforms) - fresh[name]).max() < TOL
        if step == 0:
            assert len(computed) == len(groups)
        else:  # a shuffle changes every merged unit: the groups reading the FFN space start afresh
            assert computed == ([deps for deps in groups if deps == (ffn,)] if step == 2 else [])


def test_many_small_updates_stay_equal_to_fresh(monkeypatch):
    """Twenty successive swaps in every space, read whole and by entries: the kept sums do not drift
    (float32 products added and subtracted; the bound is the fresh computation's own, TOL)."""
    maps, states = parents("vit-cls")
    names = [s.name for s in maps[0].spaces]
    cached = WeightSimilarity(maps, states)
    transforms = identity_transforms(maps)
    for name in names:
        cached(name, transforms)
    computed = spied(monkeypatch, cached, names)
    rng = np.random.default_rng(0)
    for step in range(20):
        for name in names:
            k = transforms[name].k
            transforms[name] = swapped(transforms[name], tuple(int(u) for u in rng.choice(k, 2, replace=False)))
        for name in names:
            whole = weight_similarity(name, maps, states, transforms)
            if step % 2:
                rows, cols = rng.integers(0, len(whole), size=(2, 50))
                assert np.abs(cached.entries(name, transforms, rows, cols) - whole[rows, cols]).max() < TOL
            else:
                assert np.abs(cached(name, transforms) - whole).max() < TOL
    assert all(not deps for deps in computed)  # only groups too small to keep were computed afresh


def test_changed_units_ignore_a_renumbering():
    t = SpaceTransform((torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 3, 2])), 4)
    renumbered = SpaceTransform((torch.tensor([3, 2, 1, 1]), torch.tensor([2, 3, 0, 1])), 4)
    removed, added = _changed_units(t, renumbered)
    assert not len(removed) and not len(added)
    moved = SpaceTransform((torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 2, 3])), 4)
    removed, added = _changed_units(t, moved)
    assert removed.tolist() == [2, 3] and added.tolist() == [2, 3]


def test_cross_blocks_only_equal_the_full_ones():
    maps, states = parents("vit-cls")
    transforms = identity_transforms(maps)
    transforms["residual"] = shuffled(transforms["residual"], 0)
    full, cross = WeightSimilarity(maps, states), WeightSimilarity(maps, states, within=False)
    for space in maps[0].space_names:
        d = maps[0][space].dim
        a, b = full(space, transforms), cross(space, transforms)
        assert np.abs(a[:d, d:] - b[:d, d:]).max() < TOL and np.array_equal(b[d:, :d], b[:d, d:].T)
        assert np.abs(np.diagonal(a) - np.diagonal(b)).max() < TOL
        within = b[:d, :d] - np.diag(np.diagonal(b)[:d])
        assert not within.any()


def test_merge_with_cross_blocks_only_equals_the_full_computation(monkeypatch):
    """Zip with no same-model budget reads cross-model blocks only: the merge is the same."""
    a, b = tiny_model("bert-seq", seed=0, dtype=torch.float32), tiny_model("bert-seq", seed=1, dtype=torch.float32)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc", mode="zip", alpha=0.5, max_sweeps=2)
    merger.collect([tiny_inputs(a, batch=8, seed=200 + i) for i in range(4)], num_samples=32, progress=False)
    fast, report = merger.solve(progress=False)
    monkeypatch.setattr("hf_mudsc.solve.descent.SolveSettings.reads_within", lambda self, n: True)
    slow, slow_report = merger.solve(progress=False)
    assert all(torch.equal(x, y) for n in fast for x, y in zip(fast[n].assign, slow[n].assign))
    assert report == slow_report
    # the report's weight similarity is that of the returned transforms, computed fresh
    maps, states = merger.unit_maps, [{n: p.detach() for n, p in m.named_parameters()} for m in (a, b)]
    for row in report:
        labels = np.concatenate([x.numpy() for x in fast[row["space"]].assign])
        sim = weight_similarity(row["space"], maps, states, fast)
        from hf_mudsc.solve.solution import pair_objective

        assert abs(row["weight_similarity"] - pair_objective(sim, labels)) <= 5e-5 + TOL


def test_entries_equal_the_whole_matrix():
    """The descent scores a solution from entries alone: they must be the whole matrix's (float32
    sums in another order), for within and cross blocks, both triangles, the diagonal, three models."""
    kinds = [("bert-seq", 2, True), ("vit-cls", 2, False), ("bert-seq", 3, True)]
    for kind, count, within in kinds:
        models = [tiny_model(kind, seed=s, dtype=torch.float32) for s in range(count)]
        maps = [unit_map_of(m) for m in models]
        states = [{n: p.detach() for n, p in m.named_parameters()} for m in models]
        transforms = identity_transforms(maps)
        sim = WeightSimilarity(maps, states, within=within)
        rng = np.random.default_rng(0)
        for space in maps[0].space_names:
            whole = sim(space, transforms, None)
            n = len(whole)
            rows, cols = rng.integers(0, n, size=(2, 3, 40))
            rows[0, :n if n < 40 else 40] = cols[0, :n if n < 40 else 40]  # some diagonal entries
            got = sim.entries(space, transforms, rows, cols)
            assert np.abs(got - whole[rows, cols]).max() < TOL, (kind, space)
            assert np.array_equal(np.diagonal(whole)[rows[rows == cols]], got[rows == cols])


def test_written_into_a_given_matrix_equals_a_new_one(monkeypatch):
    """``out`` (a dirty matrix, as the descent reuses them) gets exactly the values of a new matrix,
    with within-model blocks or without, and the identity of a space with no member counted."""
    maps, states = parents()
    transforms = identity_transforms(maps)
    transforms["residual"] = shuffled(transforms["residual"], 0)
    for within in (True, False):
        for space in maps[0].space_names:
            new = WeightSimilarity(maps, states, within=within)(space, transforms)
            out = np.full_like(new, np.nan)
            got = WeightSimilarity(maps, states, within=within)(space, transforms, out=out)
            assert got is out and np.array_equal(out, new), (within, space)
    with pytest.raises(ValueError, match="float64"):
        WeightSimilarity(maps, states)("residual", transforms, out=np.empty((3, 3)))
    monkeypatch.setattr(WeightSimilarity, "_parts", lambda *args: [])  # no member counted: the identity
    out = np.full((2 * maps[0]["residual"].dim,) * 2, np.nan)
    assert np.array_equal(WeightSimilarity(maps, states)("residual", transforms, out=out), np.eye(len(out)))


def test_kept_blocks_wait_in_the_spill_between_calls_written_again_only_when_changed(monkeypatch):
    """Between calls every kept group's blocks are out of memory (in the spill); a call that changes
    none writes nothing, a change of one space rewrites only the groups that read it, and the results
    are the same bits as a similarity whose spill refuses everything (blocks held in memory)."""
    from hf_mudsc.spill import Spill

    maps, states = parents()
    names = [s.name for s in maps[0].spaces]
    ffn = next(n for n in names if "ffn" in n)
    steps = [identity_transforms(maps)]
    steps.append({**steps[0], ffn: swapped(steps[0][ffn], (0, 1))})
    written: list = []
    put = Spill.put
    monkeypatch.setattr(Spill, "put", lambda self, key, tensor: written.append(key) or put(self, key, tensor))
    spilled = WeightSimilarity(maps, states)
    first = {name: spilled(name, steps[0]).copy() for name in names}
    assert spilled._cache and all(kept.part.gram is None for kept in spilled._cache.values())
    assert len(written) == len(spilled._cache) * len(spilled.pairs)
    written.clear()
    for name in names:
        assert np.array_equal(spilled(name, steps[0]), first[name])
    assert not written
    second = {name: spilled(name, steps[1]).copy() for name in names}
    assert written and {key[0][1] for key in written} == {(ffn,)}
    monkeypatch.setattr(Spill, "put", lambda self, key, tensor: False)
    held = WeightSimilarity(maps, states)
    for step, want in zip(steps, (first, second)):
        for name in names:
            assert np.array_equal(held(name, step), want[name]), name
    assert all(kept.part.gram is not None for kept in held._cache.values())

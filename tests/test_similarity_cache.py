"""Weight similarity: the cached, cross-block-only computation equals a fresh full one."""
from __future__ import annotations

import numpy as np
import torch

from conftest import tiny_inputs, tiny_model
from hf_mudsc import MuDSCMerger
from hf_mudsc.similarity import WeightSimilarity, weight_similarity
from hf_mudsc.transforms import SpaceTransform, identity_transforms
from hf_mudsc.unitmaps import unit_map_of

TOL = 1e-6  # float32 Gram products of standardised (O(1)) features, summed in another order


def parents(kind: str = "bert-seq"):
    models = [tiny_model(kind, seed=0, dtype=torch.float32), tiny_model(kind, seed=1, dtype=torch.float32)]
    return [unit_map_of(m) for m in models], [{n: p.detach() for n, p in m.named_parameters()} for m in models]


def shuffled(t: SpaceTransform, seed: int) -> SpaceTransform:
    g = torch.Generator().manual_seed(seed)
    return SpaceTransform((t.assign[0], t.assign[1][torch.randperm(t.k, generator=g)]), t.k)


def test_constant_groups_are_kept_and_the_rest_recomputed_equal_to_fresh(monkeypatch):
    """A group that reads no other space (embeddings, norms) is computed once and kept; every other
    group is recomputed at each call; the result always equals a fresh computation."""
    maps, states = parents()
    names = [s.name for s in maps[0].spaces]
    monkeypatch.setattr("hf_mudsc.similarity._CACHED_FEATURES", 1)  # keep every constant group
    cached = WeightSimilarity(maps, states)
    computed: list[tuple[str, ...]] = []  # the other spaces of each recomputed group
    original = WeightSimilarity._compute
    deps_of = {(m.param, m.axis): deps for n in names for deps, members in cached._groups(n).items() for m in members}

    def spy(self, members, *args):
        computed.append(deps_of[members[0].param, members[0].axis])
        return original(self, members, *args)

    monkeypatch.setattr(WeightSimilarity, "_compute", spy)
    transforms = identity_transforms(maps)
    ffn = next(n for n in names if "ffn" in n)
    groups = [deps for n in names for deps in cached._groups(n)]
    for step in range(3):
        fresh = {name: weight_similarity(name, maps, states, transforms) for name in names}
        computed.clear()
        for name in names:
            assert np.abs(cached(name, transforms) - fresh[name]).max() < TOL
        constant = sum(1 for deps in groups if not deps)
        assert len(computed) == (len(groups) if step == 0 else len(groups) - constant)
        assert all(deps for deps in computed) or step == 0
        transforms = {**transforms, ffn: shuffled(transforms[ffn], step)}


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

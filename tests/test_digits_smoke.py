"""Real data: two tiny ViTs trained from different seeds on digits 0-4 / 5-9. Every matching method
must reach what a working alignment reaches on such pairs, which a random alignment does not.

Floors measured on 5 seed pairs of this recipe, (0, 1) (this test's), (2, 3), (4, 5), (6, 7), (8, 9)
(joint / per-task accuracy; the (6, 7) pair is left out: its parent 0 failed to train, 0.77 alone):

- ZipIt! (published settings), activation matching, weight matching: per task 0.436-0.616, joint
  0.216-0.382; on (0, 1) per task 0.496 / 0.611 / 0.616 (activation / ZipIt! / weight), joint
  0.316 / 0.382 / 0.371;
- gain over plain averaging: at least 0.19 per task and 0.109 joint on every pair;
- random head-respecting permutations (3 per pair): per task 0.20-0.42 (mean per pair 0.25-0.35),
  joint 0.10-0.22; on (0, 1) per task 0.20 / 0.30 / 0.27.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_mudsc import MuDSCMerger
from hf_mudsc.demo.parents import load_digits_dataset, task_parents
from hf_mudsc.evaluation import evaluate_models, image_batches
from hf_mudsc.transforms import SpaceTransform, random_permutation

RECIPE = dict(image_size=8, patch_size=2, hidden_size=32, layers=2, heads=4, intermediate=64,
              epochs=20, batch_size=64, lr=3e-3)
PER_TASK_FLOOR = 0.42  # below every method on every healthy pair, above the mean of random alignments
JOINT_FLOOR = 0.2  # below every method on every healthy pair (random alignments reach 0.22: per task rejects them)


@pytest.fixture(scope="module")
def digit_pair(tmp_path_factory):
    data = load_digits_dataset()
    paths, tests = task_parents(data, [range(5), range(5, 10)], [0, 1], RECIPE,
                                {"name": "sklearn-digits", "test": "smoke"}, tmp_path_factory.mktemp("cache"))
    return [str(p) for p in paths], tests, data["train"].shuffle(seed=0).select(range(128))


def test_matching_reaches_what_a_working_alignment_reaches(digit_pair):
    paths, tests, calibration = digit_pair
    merger = MuDSCMerger.from_pretrained(paths, "zipit")
    scoring = image_batches(tests, merger.parents[0].processor)
    alone = [evaluate_models([p.model if i == t else None for i, p in enumerate(merger.parents)], scoring)
             for t in range(2)]
    assert min(a["per_task"] for a in alone) > 0.85  # the parents did learn their tasks (0.969 each)
    merger.collect(calibration, num_samples=128, batch_size=64, progress=False)
    average = evaluate_models(merger.merge(method="average", progress=False).task_models, scoring)
    for method in ("zipit", "activation-matching", "weight-matching"):
        merged = evaluate_models(merger.merge(method=method, progress=False).task_models, scoring)
        assert merged["per_task"] > max(PER_TASK_FLOOR, average["per_task"] + 0.1), (method, merged, average)
        assert merged["joint"] > max(JOINT_FLOOR, average["joint"] + 0.08), (method, merged, average)
    # the floors reject a broken alignment: random function-preserving permutations of parent B
    umap = merger.unit_maps[0]
    randoms = []
    for seed in range(100, 103):
        perm = random_permutation(umap, seed)
        transforms = {n: SpaceTransform((torch.arange(p.k), p.assign[0]), p.k) for n, p in perm.items()}
        randoms.append(evaluate_models(merger.apply(transforms).task_models, scoring)["per_task"])
    assert np.mean(randoms) < PER_TASK_FLOOR - 0.05, randoms

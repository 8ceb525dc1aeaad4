"""Smoke test on real data: two tiny ViTs trained from different seeds on digits 0-4 / 5-9
merge with a joint accuracy above plain weight averaging."""
from __future__ import annotations

import pytest

from hf_mudsc import MuDSCMerger
from hf_mudsc.evaluation import evaluate_models, image_batches
from hf_mudsc.demo.parents import load_digits_dataset, task_parents

RECIPE = dict(image_size=8, patch_size=2, hidden_size=32, layers=2, heads=4, intermediate=64,
              epochs=20, batch_size=64, lr=3e-3)


@pytest.fixture(scope="module")
def digit_pair(tmp_path_factory):
    data = load_digits_dataset()
    paths, tests = task_parents(data, [range(5), range(5, 10)], [0, 1], RECIPE,
                                {"name": "sklearn-digits", "test": "smoke"}, tmp_path_factory.mktemp("cache"))
    return [str(p) for p in paths], tests, data["train"].shuffle(seed=0).select(range(128))


def test_matching_beats_plain_averaging(digit_pair):
    paths, tests, calibration = digit_pair
    merger = MuDSCMerger.from_pretrained(paths, "zipit")
    scoring = image_batches(tests, merger.parents[0].processor)
    alone = [evaluate_models([p.model if i == t else None for i, p in enumerate(merger.parents)], scoring)
             for t in range(2)]
    assert min(a["per_task"] for a in alone) > 0.8  # the parents did learn their tasks
    merger.collect(calibration, num_samples=128, batch_size=64, progress=False)
    average = evaluate_models(merger.merge(method="average", progress=False).task_models, scoring)
    for method in ("zipit", "activation-matching", "weight-matching"):
        merged = evaluate_models(merger.merge(method=method, progress=False).task_models, scoring)
        assert merged["joint"] > average["joint"] + 0.03, (method, merged, average)

"""A merge uses the statistics its recipe says: ``merge(data)`` collects anew; a merge without data
refuses overrides that would change the collected statistics instead of silently reusing them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_inputs, tiny_model
from hf_mudsc import MuDSCMerger
from test_apply import permuted_copy


def batches(model, seed: int, n: int = 3) -> list:
    return [tiny_inputs(model, batch=8, seed=seed + i) for i in range(n)]


@pytest.fixture(scope="module")
def pair():
    model = tiny_model("vit-cls")
    return model, permuted_copy(model, seed=2)[0]


def merger_of(pair, **config) -> MuDSCMerger:
    return MuDSCMerger.from_pretrained(list(pair), "mudsc", alpha=0.0, max_sweeps=1, **config)


def same_statistics(a: MuDSCMerger, b: MuDSCMerger) -> bool:
    return a._activation.keys() == b._activation.keys() and all(
        np.array_equal(a._activation[k], b._activation[k]) for k in a._activation)


def test_merge_with_new_data_collects_it(pair):
    merger = merger_of(pair)
    merger.collect(batches(pair[0], 10), num_samples=24, progress=False)
    result = merger.merge(batches(pair[0], 50, n=2), num_samples=16, progress=False)
    fresh = merger_of(pair)
    fresh.collect(batches(pair[0], 50, n=2), num_samples=16, progress=False)
    assert same_statistics(merger, fresh)
    assert result.recipe()["calibration"]["num_samples"] == 16


def test_an_override_that_changes_the_statistics_is_refused_without_data(pair):
    merger = merger_of(pair)
    merger.collect(batches(pair[0], 10), num_samples=24, progress=False)
    for override, text in [({"residual_layers": (0,)}, r"residual_layers=\(0,\) changes the activation statistics"),
                           ({"max_tokens_per_batch": 4}, "max_tokens_per_batch=4 changes"),
                           ({"seed": 3}, "seed=3 changes"),
                           ({"statistics_samples": 8}, "statistics_samples=8 changes")]:
        with pytest.raises(ValueError, match=text + ".*pass the calibration data again"):
            merger.merge(progress=False, **override)
    merger.merge(progress=False, zip_decay=0.5)  # a solve setting reuses the statistics


def test_an_override_with_data_is_collected_and_recorded(pair):
    data = batches(pair[0], 10)
    merger = merger_of(pair)
    merger.collect(data, num_samples=24, progress=False)
    result = merger.merge(data, num_samples=24, progress=False, residual_layers=(0, 2))
    fresh = merger_of(pair, residual_layers=(0, 2))
    fresh.collect(data, num_samples=24, progress=False)
    assert same_statistics(merger, fresh)
    assert result.recipe()["config"]["residual_layers"] == [0, 2]


def test_statistics_read_the_first_statistics_samples_and_the_repairs_every_sample(pair):
    data = batches(pair[0], 10, n=4)  # 4 batches of 8 samples
    capped = merger_of(pair, statistics_samples=12)
    result = capped.merge(data, num_samples=32, progress=False)
    alone = merger_of(pair, statistics_samples=None)  # given only those samples
    alone.collect([data[0], {k: v[:4] for k, v in data[1].items()}], num_samples=12, progress=False)
    assert same_statistics(capped, alone)
    assert [r["samples"] for r in result.repairs] == [32, 32, 32]
    recorded = result.recipe()["calibration"]
    assert recorded["num_samples"] == 32 and recorded["statistics_samples"] == 12
    every, above = merger_of(pair, statistics_samples=None), merger_of(pair, statistics_samples=1000)
    for merger in (every, above):
        merger.collect(data, num_samples=32, progress=False)
    assert same_statistics(every, above) and not same_statistics(capped, every)
    assert "statistics_samples" not in above.calibration  # the cap read every sample: nothing to record


def test_more_merged_layers_than_collected_are_refused(pair):
    merger = merger_of(pair, merge_layers=1)
    merger.collect(batches(pair[0], 10), num_samples=24, progress=False)
    merger.merge(progress=False, merge_layers=0)  # fewer spaces: their statistics are there
    with pytest.raises(ValueError, match="merge_layers=None merges .* spaces without statistics"):
        merger.merge(progress=False, merge_layers=None)


def test_a_part_of_a_split_is_collected_alone_and_recorded(pair):
    from datasets import Dataset

    images = [tiny_inputs(pair[0], batch=1, seed=s)["pixel_values"][0].numpy() for s in range(20)]
    merger = merger_of(pair)
    fit, held = merger.prepare_calibration(Dataset.from_dict({"pixel_values": images}), num_samples=20,
                                           batch_size=4).split(0.25)
    merger.collect(fit, progress=False)
    assert merger.calibration["part"] == "fit: 15 of the drawn rows" and merger.calibration["num_samples"] == 15
    assert merger.calibration["samples_per_space"]["layer.0.ffn"] == 15 * 17  # 16 patches and the CLS token
    assert sum(len(b["pixel_values"]) for b in held) == 5


def test_texts_batched_by_length_give_what_batches_in_drawn_order_give(tmp_path):
    """Without a token cap the statistics and the repairs are sums over every real token, so
    batching texts by length changes them by rounding only."""
    from parents_on_disk import bert_parents, text_dataset
    from transformers import AutoTokenizer

    paths = [str(p) for p in bert_parents(tmp_path)]
    data = text_dataset(40)

    def collected(calibration_data):
        merger = MuDSCMerger.from_pretrained(paths, "mudsc", alpha=0.0, max_tokens_per_batch=None)
        merger.collect(calibration_data, num_samples=40, batch_size=6, progress=False)
        return merger

    by_length = collected(data)
    source = by_length._calibration_source
    texts = [data[int(i)]["text"] for i in source.indices]
    tokenizer = AutoTokenizer.from_pretrained(paths[0])
    drawn = [dict(tokenizer(texts[k:k + 6], padding=True, return_tensors="pt")) for k in range(0, 40, 6)]
    widths = lambda batches: [b["input_ids"].numel() for b in batches]  # noqa: E731
    assert sum(widths(source)) < sum(widths(drawn))  # less padding
    in_order = collected(drawn)
    for name, corr in by_length._activation.items():
        np.testing.assert_allclose(corr, in_order._activation[name], rtol=0, atol=1e-5)
    transforms, _ = by_length.solve(progress=False)
    merged = [m.apply(transforms) for m in (by_length, in_order)]
    assert [r["samples"] for r in merged[0].repairs] == [40, 40, 40]
    for name, value in merged[0].weights.shared.items():
        torch.testing.assert_close(value, merged[1].weights.shared[name], rtol=0, atol=1e-4)

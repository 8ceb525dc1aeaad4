"""Calibration data: a seeded random draw of rows (not the first rows of a sorted dataset), the same
on every process, recorded; a seeded held-out split into disjoint parts."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from datasets import Dataset

from hf_mudsc.data import Calibration, DataError, calibration

ROWS = 100


def row_ids(texts, *pair, **_) -> dict[str, torch.Tensor]:
    """A stand-in tokenizer: each text is its row number."""
    return {"input_ids": torch.tensor([[int(t)] for t in texts])}


def sorted_by_label() -> Dataset:
    """Row i has label i // 50: the first 50 rows are all of label 0."""
    return Dataset.from_dict({"text": [str(i) for i in range(ROWS)], "label": [i // 50 for i in range(ROWS)]})


def seen(calib: Calibration) -> list[int]:
    return [int(i) for batch in calib for i in batch["input_ids"][:, 0]]


def make(data, num_samples=20, seed=0, **kw) -> Calibration:
    return calibration(data, row_ids, "text", num_samples=num_samples, batch_size=6, seed=seed, **kw)


@pytest.mark.parametrize("stream", [False, True])
def test_the_draw_is_random_seeded_and_not_the_first_rows(stream):
    data = sorted_by_label().to_iterable_dataset() if stream else sorted_by_label()
    rows = seen(make(data))
    assert len(rows) == len(set(rows)) == 20
    assert rows != list(range(20)) and max(rows) >= 20  # not the first rows
    if not stream:  # a draw over the whole table: both labels
        assert {r // 50 for r in rows} == {0, 1}
    assert seen(make(data)) == rows  # the same seed draws the same rows
    assert seen(make(data, seed=1)) != rows


@pytest.mark.parametrize("stream", [False, True])
def test_every_process_takes_its_share_of_the_same_draw(stream):
    data = sorted_by_label().to_iterable_dataset() if stream else sorted_by_label()
    whole = make(data, num_samples=21)
    shares = [seen(dataclasses.replace(whole, rank=r, world_size=2)) for r in range(2)]
    drawn = seen(whole)
    assert shares == [drawn[0::2], drawn[1::2]]


def test_the_recipe_says_how_the_rows_were_drawn():
    info = make(sorted_by_label(), seed=7).describe()
    assert info["seed"] == 7 and info["num_samples"] == 20
    assert "drawn at random without replacement" in info["sampling"]
    assert "shuffled through a buffer" in make(sorted_by_label().to_iterable_dataset()).describe()["sampling"]


@pytest.mark.parametrize("stream", [False, True])
def test_split_gives_two_disjoint_seeded_parts_of_the_draw(stream):
    data = sorted_by_label().to_iterable_dataset() if stream else sorted_by_label()
    whole = make(data, num_samples=40)
    fit, held = whole.split(0.25)
    a, b = seen(fit), seen(held)
    assert (len(a), len(b)) == (30, 10)
    assert not set(a) & set(b) and sorted(a + b) == sorted(seen(whole))
    assert (seen(whole.split(0.25)[1])) == b  # deterministic
    assert set(b) != set(seen(whole)[-10:])  # chosen at random, not the tail of the draw
    assert fit.describe()["part"] == "fit: 30 of the drawn rows" and held.describe()["num_samples"] == 10
    # a part passes through calibration() as it is, and shards over processes like the whole
    assert calibration(held, None, "text", num_samples=1, batch_size=1) is held
    shares = [seen(dataclasses.replace(held, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(b)


def test_split_of_ready_batches_is_by_batch():
    batches = [{"input_ids": torch.tensor([[i], [i + 100]])} for i in range(10)]
    whole = calibration(batches, None, "text", num_samples=20, batch_size=2, seed=3)
    fit, held = whole.split(0.3)
    a, b = seen(fit), seen(held)
    assert len(b) == 6 and len(a) == 14 and not set(a) & set(b)
    assert sorted(a + b) == sorted(seen(whole))
    assert held.describe()["part"] == "held-out: 3 of the drawn batches"


def test_split_refuses_what_cannot_be_split():
    with pytest.raises(DataError, match=r"holdout must be a fraction in \(0, 1\), got 1.0"):
        make(sorted_by_label()).split(1.0)
    with pytest.raises(DataError, match="cannot split 1 calibration row into two parts"):
        make(sorted_by_label(), num_samples=1).split(0.5)

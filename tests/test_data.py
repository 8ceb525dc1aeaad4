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
    assert info["batching"].startswith("texts grouped by length within windows of 384 drawn rows")
    assert calibration([{"input_ids": torch.ones(2, 3)}], None, "text", num_samples=2,
                       batch_size=2).describe()["batching"] == "as given"


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


# ------------------------------------------------------------------ texts batched by length
def words(texts, *pair, padding=False, return_tensors=None, **_) -> dict:
    """A stand-in tokenizer: one token per word (the word read as a number), padded with 0 on the right."""
    ids = [[int(w) for w in t.split()] for t in texts]
    if not padding:
        return {"input_ids": ids}
    width = max(map(len, ids))
    return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}


def varied_lengths() -> Dataset:
    """Row i: its number, 1 + (7 i mod 13) times."""
    return Dataset.from_dict({"text": [" ".join([str(i)] * (1 + 7 * i % 13)) for i in range(ROWS)]})


def rows_and_widths(calib: Calibration) -> list[tuple[list[int], int]]:
    return [([int(i) for i in b["input_ids"][:, 0]], b["input_ids"].shape[1]) for b in calib]


def test_texts_are_batched_by_length_each_drawn_row_once():
    calib = calibration(varied_lengths(), words, "text", num_samples=40, batch_size=6, seed=0)
    batches = rows_and_widths(calib)
    rows = [r for group, _ in batches for r in group]
    assert sorted(rows) == sorted(int(i) for i in calib.indices)
    length = {i: 1 + 7 * i % 13 for i in range(ROWS)}
    budget = 6 * sum(length[r] for r in rows) / len(rows)
    for group, width in batches:
        assert width == max(length[r] for r in group)
        assert len(group) == 1 or len(group) * width <= budget  # about batch_size x the mean length
    assert [w for _, w in batches] == sorted(w for _, w in batches)  # one window: shortest first
    padded = sum(len(group) * width for group, width in batches)
    drawn = [length[int(i)] for i in calib.indices]
    in_drawn_order = sum(len(c) * max(c) for c in (drawn[k:k + 6] for k in range(0, 40, 6)))
    assert padded - sum(drawn) <= 0.25 * (in_drawn_order - sum(drawn))


def test_texts_are_grouped_within_windows_of_drawn_rows(monkeypatch):
    monkeypatch.setattr("hf_mudsc.data.LENGTH_WINDOW", 2)  # windows of 12 drawn rows
    calib = calibration(varied_lengths(), words, "text", num_samples=40, batch_size=6, seed=0)
    window = {int(r): k // 12 for k, r in enumerate(calib.indices)}
    batches = rows_and_widths(calib)
    assert all(len({window[r] for r in group}) == 1 for group, _ in batches)
    assert [window[group[0]] for group, _ in batches] == sorted(window[group[0]] for group, _ in batches)


def test_head_takes_the_first_drawn_rows_of_a_part():
    whole = make(sorted_by_label(), num_samples=40)
    assert seen(whole.head(7)) == seen(whole)[:7] and seen(whole.head(100)) == seen(whole)
    fit, _ = whole.split(0.25)
    assert seen(fit.head(5)) == seen(fit)[:5]
    by_length = calibration(varied_lengths(), words, "text", num_samples=40, batch_size=6, seed=0)
    first = [r for group, _ in rows_and_widths(by_length.head(9)) for r in group]
    assert sorted(first) == sorted(int(i) for i in by_length.indices[:9])  # the first drawn, not the shortest


@pytest.mark.parametrize("apart", [(9,), (40,), (5, 17)])
def test_rows_batched_apart_make_the_first_batches_those_of_their_heads(apart):
    """With ``apart``, the drawn rows are batched in pieces cut at its counts (the statistics read one
    such head and the repairs another: the shorter head's batches are then the longer's first ones)."""
    by_length = calibration(varied_lengths(), words, "text", num_samples=40, batch_size=6, seed=0)
    whole = dataclasses.replace(by_length, apart=apart)
    batches = list(whole)
    piece = {int(r): sum(k >= n for n in apart) for k, r in enumerate(by_length.indices)}  # the piece of each row
    for n in apart:
        head = list(whole.head(n))
        assert len(batches) > len(head) or n == 40
        for mine, theirs in zip(batches, head):
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    for group, _ in rows_and_widths(whole):
        assert len({piece[r] for r in group}) == 1  # no batch holds rows of two pieces
    assert sorted(r for group, _ in rows_and_widths(whole) for r in group) == sorted(int(i) for i in by_length.indices)
    if apart != (40,):  # without it, the pieces' rows share batches
        assert any(len({piece[r] for r in group}) > 1 for group, _ in rows_and_widths(by_length))
        assert whole.describe()["batching"].endswith(
            f"the first {' and the first '.join(map(str, apart))} drawn rows apart from the rest")


def test_head_of_ready_batches_takes_their_first_samples():
    given = [{"input_ids": torch.arange(3 * b, 3 * b + 3).unsqueeze(1)} for b in range(4)]  # 12 samples
    whole = calibration(given, None, "text", num_samples=10, batch_size=2)
    assert seen(whole) == list(range(10))
    head = whole.head(5)
    assert [len(b["input_ids"]) for b in head] == [3, 2] and seen(head) == list(range(5))  # the last batch cut
    assert seen(head.head(7)) == list(range(5)) and seen(head.head(4)) == list(range(4))
    assert head.describe()["num_samples"] == 5 and whole.head(50).describe()["num_samples"] == 10
    fit, _ = whole.split(0.5)  # a part: its batches, then its first samples
    assert seen(fit.head(4)) == seen(fit)[:4]
    with pytest.raises(DataError, match="split\\(\\) the calibration before taking its head"):
        head.split(0.5)


# ------------------------------------------------------------------ what a cell holds
def test_texts_are_cut_where_the_tokenizer_or_the_parents_positions_end():
    from conftest import tiny_model
    from hf_mudsc.data import MAX_TEXT_LENGTH, text_length
    from parents_on_disk import tokenizer

    tok = tokenizer()  # model_max_length 64
    bert, short_bert = tiny_model("bert-seq"), tiny_model("bert-seq", max_position_embeddings=24)
    roberta = tiny_model("roberta-seq", max_position_embeddings=40)  # positions start past the padding index
    assert text_length(tok, [bert]) == min(MAX_TEXT_LENGTH, 64)
    assert text_length(tok, [bert, short_bert]) == 24
    assert text_length(tok, [roberta]) == 40 - roberta.config.pad_token_id - 1
    long = Dataset.from_dict({"text": [" ".join(["game"] * 200)] * 4})
    (batch,) = list(calibration(long, tok, "text", num_samples=4, batch_size=4, max_length=24))
    assert batch["input_ids"].shape == (4, 24)


def test_parents_with_few_positions_merge_long_texts(tmp_path):
    """Parents of 24 positions, texts of 200 words: the calibration is cut to fit (was a crash in
    the statistics pass: the texts were cut at 128 tokens whatever the parents)."""
    from hf_mudsc import MuDSCMerger
    from parents_on_disk import save_bert

    folders = [save_bert(tmp_path / f"p{s}", s, ["a", "b"], max_position_embeddings=24) for s in (0, 1)]
    merger = MuDSCMerger.from_pretrained([str(f) for f in folders], "zipit")
    data = Dataset.from_dict({"text": [" ".join(["game", "team", "vote"] * 70)] * 8})
    result = merger.merge(data, num_samples=8, batch_size=4)
    assert all(torch.isfinite(p).all() for p in result.task_models[0].parameters())


def test_missing_texts_are_empty_and_word_lists_are_one_text_each():
    from parents_on_disk import tokenizer

    tok = tokenizer()
    data = Dataset.from_dict({"sentence1": ["good game", None], "sentence2": [None, "bad law"],
                              "tokens": [["good", "game"], ["bad", "law", "court"]]})

    def decoded(column):
        calib = calibration(data, tok, "text", num_samples=2, batch_size=2, column=column, seed=0)
        return sorted(tok.decode(ids[mask.bool()]) for b in calib for ids, mask in zip(b["input_ids"], b["attention_mask"]))

    assert decoded("sentence1") == ["[CLS] [SEP]", "[CLS] good game [SEP]"]  # not the text "None" ([UNK])
    assert decoded("sentence1,sentence2") == ["[CLS] [SEP] bad law [SEP]", "[CLS] good game [SEP] [SEP]"]
    assert decoded("tokens") == ["[CLS] bad law court [SEP]", "[CLS] good game [SEP]"]  # not pairs of words
    assert calibration(data, tok, "text", num_samples=2, batch_size=2).column == ("sentence1", "sentence2")
    assert calibration(data.remove_columns(["sentence1", "sentence2"]), tok, "text", num_samples=2,
                       batch_size=2).column == ("tokens",)


def test_a_column_of_other_values_is_refused_for_texts_and_images():
    """A column chosen by mistake (labels, numbers, images for a text model, numbers or short lists for
    an image model) was turned into text or tiny images and merged on."""
    from PIL import Image

    from parents_on_disk import tokenizer

    data = Dataset.from_dict({"text": ["good game", "bad law"], "label": [0, 1], "score": [0.5, 1.5],
                              "feats": [[1, 2, 3], [4, 5, 6]]})
    for column, kind in (("label", "int"), ("score", "float")):
        with pytest.raises(DataError, match=f"the text column holds {kind} values, not texts"):
            list(calibration(data, tokenizer(), "text", num_samples=2, batch_size=2, column=column))
    import pandas as pd

    with_gap = pd.DataFrame({"text": ["good game", float("nan")]})  # pandas' missing text: empty
    lengths = sorted(int(b["attention_mask"].sum()) for b in calibration(with_gap, tokenizer(), "text", num_samples=2,
                                                                          batch_size=2))
    assert lengths == [2, 4]  # the missing text is [CLS] [SEP]
    images = Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 2})
    with pytest.raises(DataError, match="holds PngImageFile values|holds Image values|values, not texts"):
        list(calibration(images, tokenizer(), "text", num_samples=2, batch_size=2, column="image"))
    from parents_on_disk import image_processor

    for column in ("label", "feats"):
        with pytest.raises(DataError, match="the image column holds values of shape"):
            list(calibration(data, image_processor(), "image", num_samples=2, batch_size=2, column=column))


def test_question_answering_rows_are_read_as_question_and_context_pairs():
    """SQuAD-style rows: the question with its context, as a QA model reads them (was the question alone)."""
    from parents_on_disk import tokenizer

    data = Dataset.from_dict({"id": ["1", "2"], "title": ["t", "t"], "question": ["who won", "what law"],
                              "context": ["good game", "bad law court"], "answers": [{}, {}]})
    assert calibration(data, tokenizer(), "text", num_samples=2, batch_size=2).column == ("question", "context")


def test_images_take_the_parents_channels_and_paths_are_opened(tmp_path):
    import numpy as np
    from PIL import Image

    from parents_on_disk import image_processor

    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L")
    rgba = Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), mode="RGBA")
    grey.save(tmp_path / "grey.png")
    data = Dataset.from_dict({"image": [grey, rgba]})
    (batch,) = list(calibration(data, image_processor(), "image", num_samples=2, batch_size=2, channels=3))
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    as_rgb = image_processor()([grey.convert("RGB"), rgba.convert("RGB")], return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], as_rgb)
    paths = Dataset.from_dict({"image": [str(tmp_path / "grey.png")] * 2})
    (batch,) = list(calibration(paths, image_processor(), "image", num_samples=2, batch_size=2, channels=3))
    assert torch.equal(batch["pixel_values"][0], as_rgb[0])
    words = Dataset.from_dict({"image": ["a cat on a mat", "a dog"]})
    with pytest.raises(DataError, match="holds text, not images or paths of image files: 'a"):
        list(calibration(words, image_processor(), "image", num_samples=2, batch_size=2, channels=3))


def test_the_default_draw_counts_rows_not_batches():
    """No num_samples: 256 rows, or every row of a smaller dataset; a loader's length counts batches,
    so ready batches give their first 256 samples (here all 80, not 10)."""
    batches = [{"pixel_values": torch.zeros(8, 1, 4, 4)} for _ in range(10)]
    assert sum(len(b["pixel_values"]) for b in calibration(batches, None, "image", num_samples=None, batch_size=8)) == 80
    assert make(sorted_by_label(), num_samples=None).num_samples == ROWS
    big = Dataset.from_dict({"text": [str(i) for i in range(300)]})
    assert make(big, num_samples=None).num_samples == 256


def test_a_stream_of_unknown_features_is_read_by_its_first_row():
    """``IterableDataset.from_generator`` (or a stream after ``map``) has no features: its columns come
    from its first row (it was taken for ready batches of model inputs)."""
    from datasets import IterableDataset

    stream = IterableDataset.from_generator(lambda: ({"text": str(i), "label": i % 2} for i in range(30)))
    assert stream.features is None
    calib = make(stream, num_samples=12)
    assert calib.column == ("text",) and len(seen(calib)) == 12


def test_rows_in_plain_form_are_drawn_as_a_dataset_of_them():
    """A list (tuple, numpy array, pandas Series) of texts, a list of row dicts, a DataFrame, a
    DatasetDict's train split: the same draw and batches as a Dataset of those rows (they were taken
    for ready batches: "must be dicts of model inputs, got str"); pairs of texts are two columns."""
    import numpy as np
    import pandas as pd
    from datasets import DatasetDict

    texts = [str(i) for i in range(ROWS)]
    want = seen(make(Dataset.from_dict({"text": texts})))
    for data in (texts, tuple(texts), np.array(texts), pd.Series(texts), pd.DataFrame({"text": texts, "label": 0}),
                 [{"text": t, "label": 1} for t in texts], DatasetDict({"train": Dataset.from_dict({"text": texts}),
                                                                         "test": Dataset.from_dict({"text": ["0"]})})):
        assert seen(make(data)) == want, type(data).__name__
    pairs = make([(t, t) for t in texts])
    assert pairs.column == ("sentence1", "sentence2")
    with pytest.raises(DataError, match="splits a, b: pass one of them"):
        make(DatasetDict({"a": Dataset.from_dict({"text": texts}), "b": Dataset.from_dict({"text": texts})}))
    with pytest.raises(DataError, match="got str: give rows as a list"):
        list(make(iter(texts)))  # a one-pass iterator of texts


def test_images_in_plain_form_and_arrays_of_any_layout_give_the_same_pixels():
    """A list of PIL images or of arrays, an N x H x W x C array, and dataset columns of arrays as
    datasets returns them (int64 lists, floats in [0, 1], channels first) give the pixels of the
    images themselves (int64 and CHW arrays were refused by PIL: "Cannot handle this data type")."""
    import numpy as np
    from PIL import Image

    from parents_on_disk import image_processor

    arrays = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    images = [Image.fromarray(a) for a in arrays]

    def pixels(data):
        (batch,) = list(calibration(data, image_processor(), "image", num_samples=4, batch_size=4, seed=0, channels=3))
        return batch["pixel_values"]

    want = pixels(Dataset.from_dict({"image": images}))
    for data in (images, list(arrays), arrays, Dataset.from_dict({"img": list(arrays)}),
                 Dataset.from_dict({"image": [a.astype(np.float32) / 255 for a in arrays]}),
                 Dataset.from_dict({"image": [a.transpose(2, 0, 1) for a in arrays]})):
        assert torch.equal(pixels(data), want)
    processed = torch.randn(4, 3, 16, 16)  # a float tensor: pixel values as the model takes them
    assert torch.equal(pixels(processed).sort(dim=0).values, processed.sort(dim=0).values)


@pytest.mark.parametrize("form", ["stream", "ready batches"])
def test_a_source_shorter_than_the_draw_reports_the_samples_it_held(form):
    """A stream or ready batches of unknown length, read with the default draw (256): the recipe's
    count and sampling say 40, what there was (said 256)."""
    rows = Dataset.from_dict({"text": [str(i) for i in range(40)]})
    data = rows.to_iterable_dataset() if form == "stream" else [{"input_ids": torch.zeros(8, 1, dtype=torch.long)}] * 5
    calib = make(data, num_samples=None)
    assert calib.describe()["num_samples"] == 256  # not known before a pass
    assert sum(len(b["input_ids"]) for b in calib) == 40
    described = calib.describe()
    assert described["num_samples"] == 40 and "first 40" in described["sampling"]
    assert calib.head(30).describe()["num_samples"] == 30


def test_the_parents_tokenizer_is_left_as_it_was(tmp_path):
    """Calibration tokenizes with a copy: a fast tokenizer kept the truncation (128 tokens) and padding
    of the calibration's calls, and the merged folder's tokenizer.json then cut every input at 128
    tokens for readers of the file itself (the tokenizers library, TEI)."""
    import json

    from parents_on_disk import tokenizer

    tok = tokenizer()
    list(calibration(Dataset.from_dict({"text": ["a b c", "d e"] * 4}), tok, "text", num_samples=8, batch_size=4,
                     max_length=16))
    assert tok.backend_tokenizer.truncation is None and tok.backend_tokenizer.padding is None
    tok.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["truncation"] is None and saved["padding"] is None


def test_sixteen_bit_images_keep_their_contrast():
    """16-bit images (PNG 'I;16', uint16 arrays) are scaled to 8 bits, not saturated to white by PIL."""
    import numpy as np
    from PIL import Image

    from hf_mudsc.data import _as_image

    levels = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    expected = np.rint(levels / 257.0).astype(np.uint8)
    for value in (Image.fromarray(levels), levels, levels.astype(np.int64)):
        pixels = np.asarray(_as_image(value, channels=1))
        assert np.abs(pixels.astype(int) - expected).max() <= 1, type(value)
        assert pixels.min() == 0 and pixels.max() == 255

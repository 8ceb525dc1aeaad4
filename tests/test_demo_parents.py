"""The demo's parents: the digits loader, class splits, a short real training run, the cache."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import AutoImageProcessor, ViTForImageClassification, pipeline

from hf_mudsc.demo import parents
from hf_mudsc.demo.parents import (
    cached_parent,
    default_cache_dir,
    image_processor,
    load_digits_dataset,
    split_classes,
    train_vit_parent,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def _tiny_dataset(labels: list[int], names: list[str]) -> Dataset:
    images = [PILImage.fromarray(np.full((8, 8), 20 * y, dtype=np.uint8), "L") for y in labels]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_digits_split(digits):
    train, test = digits["train"], digits["test"]
    assert (len(train), len(test)) == (1347, 450)
    assert train.features["label"].names == [str(d) for d in range(10)]
    image = test[0]["image"]
    assert image.mode == "L" and image.size == (8, 8)
    counts = np.bincount(list(test["label"]), minlength=10)
    totals = counts + np.bincount(list(train["label"]), minlength=10)
    assert np.all(np.abs(counts - totals / 4) <= 1)  # stratified
    again = load_digits_dataset()
    assert list(again["test"]["label"]) == list(test["label"])
    assert np.array_equal(np.asarray(again["test"][0]["image"]), np.asarray(image))


def test_split_classes_relabels_and_keeps_names():
    data = _tiny_dataset([0, 1, 2, 3, 1, 3, 0], ["zero", "one", "two", "three"])
    first, second = split_classes(data, [[3, 1], [0]])
    assert list(first["label"]) == [1, 0, 1, 0]  # 1 -> 1, 3 -> 0, in the group's order
    assert first.features["label"].names == ["three", "one"]
    assert list(second["label"]) == [0, 0] and second.features["label"].names == ["zero"]
    # images follow their labels: original label 3 images have grey level 60
    assert [int(np.asarray(im)[0, 0]) for im in first["image"]] == [20, 60, 20, 60]
    with pytest.raises(ValueError, match="overlap"):
        split_classes(data, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="out of range"):
        split_classes(data, [[0, 7]])


TINY_RECIPE = dict(image_size=8, patch_size=4, hidden_size=16, layers=1, heads=2, intermediate=32,
                   epochs=1, batch_size=32, lr=1e-3)


def test_train_saves_a_pipeline_ready_folder(digits, tmp_path):
    train = split_classes(digits["train"].select(range(200)), [[5, 6, 7]])[0]
    folder = train_vit_parent(train, seed=0, out_dir=tmp_path / "p", **TINY_RECIPE)
    model = ViTForImageClassification.from_pretrained(folder)
    assert model.config.id2label == {0: "5", 1: "6", 2: "7"}
    assert model.config.label2id == {"5": 0, "6": 1, "7": 2}

    image = digits["test"][0]["image"]
    classify = pipeline("image-classification", model=str(folder))
    result = classify(image)
    assert {r["label"] for r in result} == {"5", "6", "7"}
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)

    reloaded = AutoImageProcessor.from_pretrained(folder)
    images = list(digits["test"][:4]["image"])
    assert torch.equal(reloaded(images=images, return_tensors="pt")["pixel_values"],
                       image_processor(8)(images=images, return_tensors="pt")["pixel_values"])

    again = train_vit_parent(train, seed=0, out_dir=tmp_path / "q", **TINY_RECIPE)
    other = ViTForImageClassification.from_pretrained(again)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name  # same recipe, same seed: same weights


def test_cached_parent(tmp_path, monkeypatch):
    calls = []

    def train_fn(out: Path) -> None:
        calls.append(out)
        (out / "weights.bin").write_text("w")

    key = {"data": "x", "seed": 0}
    first = cached_parent(key, train_fn, tmp_path)
    assert (first / "weights.bin").read_text() == "w" and (first / "parent_recipe.json").is_file()
    assert cached_parent(dict(reversed(key.items())), train_fn, tmp_path) == first
    assert len(calls) == 1
    second = cached_parent({"data": "x", "seed": 1}, train_fn, tmp_path)
    assert second != first and len(calls) == 2

    def broken(out: Path) -> None:
        (out / "half").write_text("h")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_parent({"data": "y"}, broken, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {first.name, second.name}  # nothing half-written

    monkeypatch.setenv("HF_MUDSC_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("HF_MUDSC_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "hf_mudsc" / "parents"


def test_digit_parents_recipe_is_keyed(monkeypatch, tmp_path):
    """digit_parents trains one parent per half with its own seed, through the cache."""
    seen = []

    def fake_train(train, *, seed, out_dir, **recipe):
        seen.append((train.features["label"].names, seed, recipe))
        (Path(out_dir) / "config.json").write_text("{}")
        return out_dir

    monkeypatch.setattr(parents, "train_vit_parent", fake_train)
    paths, tests = parents.digit_parents(cache_dir=tmp_path, seeds=(3, 4))
    assert [s[:2] for s in seen] == [(["0", "1", "2", "3", "4"], 3), (["5", "6", "7", "8", "9"], 4)]
    assert seen[0][2] == parents.DIGITS_RECIPE
    assert len(set(paths)) == 2 and all((p / "config.json").is_file() for p in paths)
    assert [len(t) for t in tests] == [226, 224] and tests[1].features["label"].names[0] == "5"
    assert parents.digit_parents(cache_dir=tmp_path, seeds=(3, 4))[0] == paths and len(seen) == 2


def test_without_pillow_the_demo_data_names_the_extra(monkeypatch):
    """Pillow is imported only when images are made, so the package and the CLI load without it."""
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"hf_mudsc\[vision\]"):
        parents.image_dataset(np.zeros((1, 8, 8), dtype=np.uint8), np.zeros(1, dtype=np.int64), ["0"])

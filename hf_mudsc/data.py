"""Calibration data: a ``datasets.Dataset`` / ``IterableDataset`` (text or image column,
prepared by the parents' own tokenizer or image processor) or ready batches of model inputs."""
from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

TEXT_COLUMNS = ("text", "sentence", "content", "review", "question", "document")
# Sentence-pair tasks: both columns go to the tokenizer as a pair (looked for before single columns).
TEXT_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
              ("question", "sentence"), ("sentence_A", "sentence_B"))
IMAGE_COLUMNS = ("image", "img", "picture", "pixel_values")
MAX_TEXT_LENGTH = 128


class DataError(ValueError):
    """The calibration data cannot feed these parents."""


@dataclass
class Calibration:
    """A re-iterable source of model-input batches, and what it is (for the model card)."""

    source: Any
    processor: Any
    modality: str
    column: tuple[str, ...] | None
    num_samples: int
    batch_size: int
    name: str | None = None
    rank: int = 0
    world_size: int = 1
    offset: int = 0  # samples of the source skipped first (the held-out part of a split starts there)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.column is None:  # ready batches of model inputs; in multi-process runs batch j goes to rank j % W
            batches = _ready_batches(self.source, self.num_samples, self.offset)
            if self.world_size > 1 and not _prepared_by_accelerate(self.source):
                batches = islice(batches, self.rank, None, self.world_size)
            yield from batches
            return
        rows = islice(iter(self.source), self.offset + self.rank, self.offset + self.num_samples, self.world_size)
        while True:
            chunk = list(islice(rows, self.batch_size))
            if not chunk:
                return
            yield self._prepare([r[self.column[0]] if len(self.column) == 1 else tuple(r[c] for c in self.column)
                                 for r in chunk])

    def split(self, holdout: float) -> tuple["Calibration", "Calibration"]:
        """Two disjoint parts of these samples: the first ``1 - holdout`` of them, and the rest
        (at least one sample each)."""
        held = min(max(1, round(holdout * self.num_samples)), self.num_samples - 1)
        if held < 1:
            raise DataError(f"num_samples={self.num_samples} is too few to hold out a part of them")
        fit = replace(self, num_samples=self.num_samples - held)
        return fit, replace(self, offset=self.offset + fit.num_samples, num_samples=held)

    def _prepare(self, values: list) -> dict[str, torch.Tensor]:
        if self.modality == "text":
            if len(values) and isinstance(values[0], (list, tuple)):
                first, second = zip(*values)
                enc = self.processor(list(first), list(second), padding=True, truncation=True,
                                     max_length=MAX_TEXT_LENGTH, return_tensors="pt")
            else:
                enc = self.processor([str(v) for v in values], padding=True, truncation=True,
                                     max_length=MAX_TEXT_LENGTH, return_tensors="pt")
            return dict(enc)
        if self.column == ("pixel_values",):
            return {"pixel_values": torch.stack([torch.as_tensor(v) for v in values])}
        images = [_as_image(v) for v in values]
        return {"pixel_values": self.processor(images, return_tensors="pt")["pixel_values"]}


def calibration(
    data: Any,
    processor: Any,
    modality: str,
    *,
    num_samples: int,
    batch_size: int,
    column: str | Sequence[str] | None = None,
) -> Calibration:
    """Check ``data`` against the parents' modality and wrap it as batches of inputs.

    ``data``: a ``datasets.Dataset`` or ``IterableDataset`` with a text or image column, or a
    pair of text columns (found by name, or ``column``: a name, two names, or ``"a,b"``), or
    any re-iterable of dicts of input tensors (a DataLoader).
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise DataError(f"num_samples must be a positive integer, got {num_samples}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size}")
    features = getattr(data, "features", None) or getattr(data, "column_names", None)
    if features is None:
        if not isinstance(data, Iterable):
            raise DataError(f"calibration data must be a datasets.Dataset or an iterable of input batches, "
                            f"got {type(data).__name__}")
        return Calibration(data, processor, modality, None, num_samples, batch_size)
    names = list(features)
    cols = _named_columns(column) if column else _find_columns(names, modality)
    for col in cols:
        if col not in names:
            raise DataError(f"the calibration data has no column '{col}' (columns: {', '.join(names)})")
    if len(cols) > 1 and modality != "text":
        raise DataError(f"a pair of columns {cols} only makes sense for text parents")
    if processor is None and cols != ("pixel_values",):
        kind = "tokenizer" if modality == "text" else "image processor"
        raise DataError(f"the parents have no {kind}: save one with the model, or pass ready batches of inputs")
    size = _length(data)
    if size == 0:
        raise DataError("the calibration data is empty")
    if size is not None and size < num_samples:
        raise DataError(f"the calibration data has {size} examples, fewer than num_samples={num_samples}; "
                        "lower num_samples or give more data")
    name = getattr(getattr(data, "info", None), "dataset_name", None)
    return Calibration(data, processor, modality, cols, num_samples, batch_size, name)


def _named_columns(column: str | Sequence[str]) -> tuple[str, ...]:
    cols = tuple(c.strip() for c in column.split(",")) if isinstance(column, str) else tuple(column)
    if not 1 <= len(cols) <= 2 or not all(cols):
        raise DataError(f"column must name one column or a pair of text columns, got {column!r}")
    return cols


def _find_columns(names: list[str], modality: str) -> tuple[str, ...]:
    if modality == "text":
        for pair in TEXT_PAIRS:
            if all(c in names for c in pair):
                return pair
    wanted, other = (TEXT_COLUMNS, IMAGE_COLUMNS) if modality == "text" else (IMAGE_COLUMNS, TEXT_COLUMNS)
    for c in wanted:
        if c in names:
            return (c,)
    if any(c in names for c in other):
        found = next(c for c in other if c in names)
        raise DataError(f"the parents take {modality} input but the calibration data has a "
                        f"{'text' if modality == 'image' else 'image'} column '{found}'")
    raise DataError(f"no {modality} column found among {', '.join(names)}; name it with column=/--column")


def _length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _ready_batches(source: Iterable, num_samples: int, offset: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Samples ``offset`` to ``offset + num_samples`` of the batches (the straddling ones cut)."""
    seen, end = 0, offset + num_samples
    for batch in source:
        if not isinstance(batch, Mapping):
            raise DataError(f"calibration batches must be dicts of model inputs, got {type(batch).__name__}")
        batch = {k: v for k, v in batch.items() if k != "labels"}
        size = len(next(iter(batch.values())))
        lo, hi = max(offset - seen, 0), min(end - seen, size)
        seen += size
        if hi > lo:
            yield batch if (lo, hi) == (0, size) else {k: v[lo:hi] for k, v in batch.items()}
        if seen >= end:
            return


def _prepared_by_accelerate(source: Any) -> bool:
    """A loader from ``accelerator.prepare`` is sharded already (``num_samples`` then counts per rank)."""
    try:
        from accelerate.data_loader import DataLoaderStateMixin
    except ImportError:  # pragma: no cover
        return False
    return isinstance(source, DataLoaderStateMixin)


def _as_image(value: Any) -> Any:
    """PIL images pass through; arrays and nested lists become PIL images."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and "bytes" in value:
        import io

        return Image.open(io.BytesIO(value["bytes"]))
    try:
        import numpy as np

        return Image.fromarray(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise DataError(f"cannot read an image from the calibration data: {err}") from None

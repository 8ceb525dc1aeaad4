"""Calibration data: a ``datasets.Dataset`` / ``IterableDataset`` (text or image column,
prepared by the parents' own tokenizer or image processor) or ready batches of model inputs."""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field, replace
from itertools import islice, pairwise
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

# A column of word lists ("tokens", as CoNLL-style token classification data) is read as the words of one text.
TEXT_COLUMNS = ("text", "sentence", "content", "review", "question", "document", "tokens")
# Sentence-pair tasks: both columns go to the tokenizer as a pair (looked for before single columns).
TEXT_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
              ("question", "context"), ("question", "sentence"), ("sentence_A", "sentence_B"))
IMAGE_COLUMNS = ("image", "img", "picture", "pixel_values")
# ``datasets``' builders of local files: a dataset read by one of them is named after it ("csv"), not after the data
FILE_BUILDERS = frozenset({"csv", "json", "parquet", "text", "arrow", "pandas", "sql", "generator", "imagefolder",
                           "audiofolder", "videofolder", "webdataset"})
DEFAULT_SAMPLES = 256  # rows drawn when none is said (every row of a smaller dataset)
MAX_TEXT_LENGTH = 128  # tokens per text at most (fewer where the tokenizer or the parents' positions allow fewer)
LENGTH_WINDOW = 64  # texts are grouped by length within windows of this many batches' worth of rows
SHUFFLE_BUFFER = 1000  # rows a streamed dataset is shuffled through, at least (see Calibration.sampling)
SPLIT_STREAM = 1  # the split draws from its own seeded stream, not from the row draw's


class DataError(ValueError):
    """The calibration data cannot feed these parents."""


@dataclass
class Calibration:
    """A re-iterable source of model-input batches, and what it is (for the model card).

    The rows are a seeded random draw of ``num_samples`` rows: map-style datasets draw row
    indices without replacement, streamed ones pass through a seeded shuffle buffer; ready
    batches are taken as given (their first ``num_samples`` samples). Every process draws the
    same rows and takes every ``world_size``-th of them. ``positions`` (set by :meth:`split`)
    restricts it to some of the drawn rows (drawn batches, for ready batches), and ``limit`` (set
    by :meth:`head`) to the first samples of those. ``apart`` (counts of drawn rows, rising): the part's
    rows are batched in pieces cut at these counts, each among its own rows, so that the part's first
    batches are exactly those of its ``head(n)`` for every ``n`` in ``apart`` (the statistics read one such
    head and the repairs another, and the repairs reuse the parents' outputs on the batches they share:
    :class:`~hf_mudsc.repair.recorded.ParentOutputs`).

    Images go in batches of ``batch_size`` rows in drawn order. Texts are grouped by length
    (:meth:`_by_length`): batches of texts of similar lengths, each of about ``batch_size`` times
    the mean length in tokens, so that little of a batch is padding and every batch holds about
    as many real tokens (a per-batch token cap then samples every text alike).
    """

    source: Any
    processor: Any
    modality: str
    column: tuple[str, ...] | None
    num_samples: int
    batch_size: int
    name: str | None = None
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    indices: np.ndarray | None = None
    positions: tuple[int, ...] | None = None
    part: str | None = None
    limit: int | None = None  # the first this many samples of this part, in drawn order (set by head)
    apart: tuple[int, ...] = ()  # the part's drawn rows are batched in pieces cut at these counts
    max_length: int = MAX_TEXT_LENGTH  # texts are cut at this many tokens
    channels: int | None = None  # images are converted to this many channels (1: grey, 3: RGB) when given
    # what a pass found of a source of unknown length that ended before num_samples ("samples"); one dict
    # for every part made by split() or head(), which replace() hands on
    found: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def count(self) -> int:
        """The samples drawn: ``num_samples``, or fewer where the source ended before (known once read)."""
        return min(self.num_samples, self.found.get("samples", self.num_samples))

    @property
    def sampling(self) -> str:
        """How the rows were chosen, in words (for the recipe)."""
        if self.column is None:
            return f"the first {self.count} samples of the given batches, in their order"
        if self.indices is not None:
            return f"{self.num_samples} rows drawn at random without replacement (seeded)"
        if hasattr(self.source, "shuffle"):
            return (f"the first {self.count} rows of the stream shuffled through a buffer of "
                    f"{self._buffer_size()} rows (seeded)")
        return f"the first {self.count} rows (the data can be neither indexed nor shuffled)"

    @property
    def batching(self) -> str:
        """How the rows go into batches, in words (for the recipe)."""
        if self.column is None:
            return "as given"
        first = f"; the first {' and the first '.join(map(str, self.apart))} drawn rows apart from the rest" \
            if self.apart else ""
        if self.modality == "text":
            return (f"texts grouped by length within windows of {self.batch_size * LENGTH_WINDOW} drawn rows, "
                    f"about batch_size x the mean length in tokens per batch{first}")
        return f"batch_size rows per batch, in drawn order{first}"

    def describe(self) -> dict[str, Any]:
        """What the recipe and the model card record about the data."""
        drawn = self.count if self.positions is None or self.column is None else len(self.positions)
        info = {"name": self.name, "column": ", ".join(self.column) if self.column else None,
                "num_samples": drawn if self.limit is None else min(drawn, self.limit),
                "batch_size": self.batch_size, "batching": self.batching, "sampling": self.sampling,
                "seed": self.seed}
        if self.part is not None:
            unit = "batches" if self.column is None else "rows"
            info["part"] = f"{self.part}: {len(self.positions or ())} of the drawn {unit}"
        return info

    def split(self, holdout: float) -> tuple["Calibration", "Calibration"]:
        """``(fit, heldout)``: two disjoint parts of the drawn rows (of the batches, for ready
        batches), ``holdout`` of them held out, chosen by the seed (the same on every process)."""
        if not 0.0 < holdout < 1.0:
            raise DataError(f"holdout must be a fraction in (0, 1), got {holdout}")
        if self.limit is not None:
            raise DataError("split() the calibration before taking its head(), not after")
        total = self._drawn_count()
        if total < 2:
            unit = "batch" if self.column is None else "row"
            raise DataError(f"cannot split {total} calibration {unit} into two parts; give more data")
        held = min(total - 1, max(1, round(holdout * total)))
        order = np.random.default_rng([self.seed, SPLIT_STREAM]).permutation(total)
        mine = np.arange(total) if self.positions is None else np.asarray(self.positions)
        parts = []
        for name, chosen in (("fit", order[held:]), ("held-out", order[:held])):
            picked = tuple(int(i) for i in np.sort(mine[chosen]))
            parts.append(replace(self, positions=picked, part=name))
        return parts[0], parts[1]

    def head(self, count: int) -> "Calibration":
        """The first ``count`` drawn rows of this part (in drawn order, not in batch order); of
        ready batches, the first ``count`` samples of this part's batches (the last one cut)."""
        return replace(self, limit=count if self.limit is None else min(count, self.limit))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.column is None:  # ready batches of model inputs; in multi-process runs batch j goes to rank j % W
            batches = _only(_ready_batches(self.source, self.num_samples, self.found), self.positions)
            if self.limit is not None:
                batches = _ready_batches(batches, self.limit)
            if self.world_size > 1 and not _prepared_by_accelerate(self.source):
                batches = islice(batches, self.rank, None, self.world_size)
            yield from batches
            return
        drawn = islice(self._drawn_rows(), self.limit)
        # one shared iterator: each piece takes its rows from where the last one ended, the last piece what is left
        parts = [*(islice(drawn, b - a) for a, b in pairwise((0, *self.apart))), drawn]
        window = self.batch_size * (LENGTH_WINDOW if self.modality == "text" else 1)
        for part in parts:
            rows = islice(part, self.rank, None, self.world_size)
            while True:
                chunk = [r[self.column[0]] if len(self.column) == 1 else tuple(r[c] for c in self.column)
                         for r in islice(rows, window)]
                if not chunk:
                    break
                if self.modality == "text":
                    yield from (self._prepare(group) for group in self._by_length(chunk))
                else:
                    yield self._prepare(chunk)

    def _by_length(self, texts: list) -> Iterator[list]:
        """``texts`` in groups of similar lengths, shortest first: a group grows while its padded
        size (rows x the longest) stays within ``batch_size`` x the mean length in tokens."""
        lengths = [len(ids) for ids in self._tokenize(texts, padding=False)["input_ids"]]
        budget = self.batch_size * sum(lengths) / len(lengths)
        group: list = []
        for i in np.argsort(lengths, kind="stable"):
            if group and (len(group) + 1) * lengths[i] > budget:
                yield group
                group = []
            group.append(texts[i])
        yield group

    def _drawn_rows(self) -> Iterator[Any]:
        """The drawn rows of this part, in drawn order (the same on every process)."""
        if self.indices is not None:
            chosen = self.indices if self.positions is None else self.indices[list(self.positions)]
            if hasattr(self.source, "select"):  # datasets.Dataset: one indexed view, read in batches
                return iter(self.source.select(chosen.tolist()))
            return (self.source[int(i)] for i in chosen)
        stream = self.source
        if hasattr(stream, "shuffle"):
            stream = stream.shuffle(seed=self.seed, buffer_size=self._buffer_size())
        return _only(_counted(islice(iter(stream), self.num_samples), self.num_samples, self.found), self.positions)

    def _drawn_count(self) -> int:
        if self.positions is not None:
            return len(self.positions)
        if self.column is None:
            return sum(1 for _ in _ready_batches(self.source, self.num_samples, self.found))
        return self.num_samples

    def _buffer_size(self) -> int:
        return max(SHUFFLE_BUFFER, self.num_samples)

    def _tokenize(self, values: list, **options: Any) -> Any:
        """Texts, pairs of texts (two columns) or word lists through the tokenizer, cut at
        ``max_length`` tokens; a missing text (``None``) is an empty one."""
        if len(self.column or ()) == 2:
            texts = [[_text(v) for v in column] for column in zip(*values)]
        else:
            texts = [[_text(v) for v in values]]
        return self.processor(*texts, truncation=True, max_length=self.max_length, **options)

    def _prepare(self, values: list) -> dict[str, torch.Tensor]:
        if self.modality == "text":
            return dict(self._tokenize(values, padding=True, return_tensors="pt"))
        if self.column == ("pixel_values",):
            return {"pixel_values": torch.stack([torch.as_tensor(v) for v in values])}
        images = [_as_image(v, self.channels) for v in values]
        return {"pixel_values": self.processor(images, return_tensors="pt")["pixel_values"]}


def calibration(
    data: Any,
    processor: Any,
    modality: str,
    *,
    num_samples: int | None,
    batch_size: int,
    column: str | Sequence[str] | None = None,
    seed: int = 0,
    max_length: int = MAX_TEXT_LENGTH,
    channels: int | None = None,
) -> Calibration:
    """Check ``data`` against the parents' modality and wrap it as batches of inputs.

    ``data``: a ``datasets.Dataset`` or ``IterableDataset`` with a text or image column, or a
    pair of text columns (found by name, or ``column``: a name, two names, or ``"a,b"``), or
    any re-iterable of dicts of input tensors (a DataLoader), or a :class:`Calibration`
    (e.g. one part of :meth:`Calibration.split`), taken as it is; or rows in plain form
    (:func:`_as_dataset`: a list of texts, of pairs of texts, of images or of row dicts, an array of
    images, a pandas DataFrame or Series, a ``DatasetDict``'s train split). ``num_samples``: rows drawn
    (``None``: :data:`DEFAULT_SAMPLES`, or every row of a dataset that has fewer); ``seed`` draws the rows;
    ``max_length``: tokens per text at most; ``channels``: what images are converted to (the
    parents' ``num_channels``).
    """
    if isinstance(data, Calibration):
        return data
    data = _as_dataset(data, modality)
    features = getattr(data, "features", None) or getattr(data, "column_names", None) or _first_row_columns(data)
    size = _length(data) if features is not None else None  # rows (the length of a loader counts batches)
    if num_samples is None:
        num_samples = DEFAULT_SAMPLES if not size else min(DEFAULT_SAMPLES, size)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise DataError(f"num_samples must be a positive integer, got {num_samples}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size}")
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
    if size == 0:
        raise DataError("the calibration data is empty")
    if size is not None and size < num_samples:
        raise DataError(f"the calibration data has {size} examples, fewer than num_samples={num_samples}; "
                        "lower num_samples or give more data")
    name = getattr(getattr(data, "info", None), "dataset_name", None)
    if name in FILE_BUILDERS:  # read from local files: the builder's name, not the data's
        name = None
    indices = None
    if size is not None and hasattr(data, "__getitem__"):  # map-style: a seeded draw of row indices
        indices = np.random.default_rng(seed).choice(size, num_samples, replace=False)
    # a copy: a fast tokenizer keeps the truncation and padding of its last call, which the parent's saved
    # tokenizer.json (and the merged folder's) would then carry
    processor = copy.deepcopy(processor)
    return Calibration(data, processor, modality, cols, num_samples, batch_size, name, seed=seed, indices=indices,
                       max_length=max_length, channels=channels)


def _as_dataset(data: Any, modality: str) -> Any:
    """Rows given in plain form as a ``datasets.Dataset``: a list or tuple (or numpy array, pandas
    Series) of texts, of pairs of texts, of images (PIL, arrays) or of row dicts (no tensors: those are
    ready batches); an array of images (N x H x W [x C], or channels first; uint8, or floats in [0, 1]);
    a float tensor N x C x H x W of processed pixel values; a pandas DataFrame. A ``DatasetDict`` gives
    its train split, or its only one. Anything else is returned as it is."""
    import datasets

    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if "train" in data or len(data) == 1:
            return data["train"] if "train" in data else next(iter(data.values()))
        raise DataError(f"the calibration data has splits {', '.join(data)}: pass one of them (data['name'])")
    if type(data).__name__ == "DataFrame" and hasattr(data, "columns"):  # pandas, without importing it
        return datasets.Dataset.from_pandas(data, preserve_index=False)
    if type(data).__name__ == "Series" and hasattr(data, "tolist"):
        data = data.tolist()
    if isinstance(data, torch.Tensor) and modality == "image" and data.ndim == 4 and data.is_floating_point():
        return datasets.Dataset.from_dict({"pixel_values": [*data.numpy()]})  # processed, as the model takes them
    if isinstance(data, (np.ndarray, torch.Tensor)):
        data = np.asarray(data)
        if modality == "image" and data.ndim in (3, 4) and data.dtype.kind in "uif":
            return _rows_of([*data], "image")
        data = data.tolist()
    if not isinstance(data, (list, tuple)) or not data:
        if isinstance(data, (list, tuple)):
            raise DataError("the calibration data is empty")
        return data
    first = data[0]
    if isinstance(first, str):
        return _rows_of(data, "text")
    if isinstance(first, (list, tuple)) and len(first) == 2 and all(isinstance(v, str) for v in first):
        return datasets.Dataset.from_dict({"sentence1": [r[0] for r in data], "sentence2": [r[1] for r in data]})
    if isinstance(first, Mapping):
        if any(isinstance(v, torch.Tensor) for v in first.values()):
            return data  # ready batches of model inputs
        return datasets.Dataset.from_list(list(data))
    if modality == "image" and (hasattr(first, "getbands") or isinstance(first, np.ndarray)):
        return _rows_of(data, "image")
    return data


def _rows_of(values: Sequence[Any], column: str) -> Any:
    """A one-column dataset of ``values`` (images: as PIL images, which it stores as images)."""
    import datasets

    if column == "image":
        values = [v if hasattr(v, "getbands") else _as_image(v) for v in values]
    return datasets.Dataset.from_dict({column: list(values)})


def text_length(tokenizer: Any, models: Sequence[torch.nn.Module]) -> int:
    """Tokens per calibration text: :data:`MAX_TEXT_LENGTH`, or fewer where the tokenizer's
    ``model_max_length`` or a parent's position embeddings (less RoBERTa's offset past the padding
    index) hold fewer."""
    limits = [MAX_TEXT_LENGTH]
    cap = getattr(tokenizer, "model_max_length", None)
    if isinstance(cap, int) and cap > 0:
        limits.append(cap)
    for model in models:
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int):
            pad = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
            limits.append(positions - (pad + 1 if isinstance(pad, int) else 0))
    return min(limits)


def _first_row_columns(data: Any) -> list[str] | None:
    """The columns of a ``datasets`` stream whose features are unknown (``from_generator``, after
    ``map``), read from its first row; ``None`` for anything else (ready batches)."""
    import datasets

    if not isinstance(data, datasets.IterableDataset):
        return None
    first = next(iter(data), None)
    return list(first) if isinstance(first, Mapping) else None


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


def _ready_batches(source: Iterable, num_samples: int,
                   found: dict[str, int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """The first ``num_samples`` samples of ``source``'s batches, without labels; ``found["samples"]``
    says how many there were when the source ends before."""
    seen = 0
    for batch in source:
        if not isinstance(batch, Mapping):
            raise DataError(f"calibration batches must be dicts of model inputs, got {type(batch).__name__}: "
                            "give rows as a list (texts, images or row dicts) or a datasets.Dataset")
        batch = {k: v for k, v in batch.items() if k != "labels"}
        size = len(next(iter(batch.values())))
        if seen + size > num_samples:
            batch = {k: v[: num_samples - seen] for k, v in batch.items()}
        yield batch
        seen += len(next(iter(batch.values())))
        if seen >= num_samples:
            return
    if found is not None:
        found["samples"] = seen


def _counted(rows: Iterator[Any], wanted: int, found: dict[str, int]) -> Iterator[Any]:
    """``rows`` as they come; ``found["samples"]`` says how many there were when fewer than ``wanted``."""
    seen = 0
    for row in rows:
        seen += 1
        yield row
    if seen < wanted:
        found["samples"] = seen


def _only(items: Iterable[Any], positions: Sequence[int] | None) -> Iterator[Any]:
    """The items at ``positions`` (sorted), or all of them."""
    if positions is None:
        yield from items
        return
    wanted = set(positions)
    last = max(positions, default=-1)
    for j, item in enumerate(items):
        if j > last:
            return
        if j in wanted:
            yield item


def _prepared_by_accelerate(source: Any) -> bool:
    """A loader from ``accelerator.prepare`` is sharded already (``num_samples`` then counts per rank)."""
    try:
        from accelerate.data_loader import DataLoaderStateMixin
    except ImportError:  # pragma: no cover
        return False
    return isinstance(source, DataLoaderStateMixin)


def _text(value: Any) -> str:
    """A text cell as the tokenizer takes it: a missing one (``None``) is empty, a list of words is
    joined (a DataFrame's missing text, NaN, arrives as ``None``); anything else (numbers, images,
    arrays: a column chosen by mistake) is refused."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    if not isinstance(value, str):
        raise DataError(f"the text column holds {type(value).__name__} values, not texts (e.g. {repr(value)[:60]}): "
                        "choose a column of texts (--column / column=)")
    return value


_MODES = {1: "L", 3: "RGB"}  # channels -> the PIL mode an image is converted to
# PIL modes of more than 8 bits per pixel (16-bit PNGs open as I;16): read as arrays, scaled to 8 bits
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _as_image(value: Any, channels: int | None = None) -> Any:
    """A PIL image from an image cell (a PIL image, ``datasets``' dict of bytes or path, an array or
    nested list, or the path of an image file), converted to ``channels`` channels when given
    (greyscale or RGBA images for RGB parents, as ``transformers.pipeline`` does)."""
    from PIL import Image

    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    if isinstance(value, (str, Path, io.BytesIO)):
        if not isinstance(value, io.BytesIO) and not Path(value).is_file():
            raise DataError(f"the image column holds text, not images or paths of image files: {str(value)[:80]!r}")
        try:
            value = Image.open(value)
        except OSError as err:
            raise DataError(f"cannot read an image from the calibration data: {err}") from None
    if isinstance(value, Image.Image) and value.mode in _WIDE_MODES:  # PIL's convert() saturates them at 255
        value = np.asarray(value) / 257.0 if value.mode.startswith("I;16") else np.asarray(value)
    if not isinstance(value, Image.Image):
        try:
            value = Image.fromarray(_image_array(np.asarray(value)))
        except (TypeError, ValueError, IndexError) as err:
            raise DataError(f"cannot read an image from the calibration data: {err}") from None
    mode = _MODES.get(channels or 0)
    return value.convert(mode) if mode is not None and value.mode != mode else value


def _image_array(array: np.ndarray) -> np.ndarray:
    """An array image as PIL reads it: height x width [x channels], uint8. Channels first (C x H x W,
    as torch keeps them) are moved last; floats in [0, 1] are scaled to [0, 255], integers beyond 255
    from 16 bits (or their largest value) to 8; other values are rounded and clipped to [0, 255] (a
    datasets column of arrays comes back as int64). Refuses arrays that are no image (numbers, lists
    of a few values: a column chosen by mistake)."""
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 2:
        raise ValueError(f"the image column holds values of shape {array.shape}, not images (choose a column of "
                         "images: --column / column=)")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        if array.dtype.kind == "f" and array.size and 0.0 <= array.min() and array.max() <= 1.0:
            array = array * 255.0
        elif array.dtype.kind in "iu" and array.size and array.max() > 255:  # 16 bits (or wider) per pixel
            array = array.astype(np.float64) * (255.0 / (65535.0 if array.max() <= 65535 else float(array.max())))
        array = np.clip(np.rint(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return array

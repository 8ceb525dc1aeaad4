"""Tiny parents saved to folders (with a tokenizer or image processor) and small calibration
data sets on disk, for the product-level tests (Python API, command line, Accelerate).

Every helper is deterministic: the same seed gives the same bytes, so several processes (or a
subprocess) can rebuild exactly the same parents and data.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from conftest import tiny_model

# 3 channels: transformers 5's image pipeline converts every image to RGB.
VIT_OVERRIDES = dict(num_channels=3)
VIT_LABELS = (["cat", "dog", "fox"], ["apple", "pear"])
BERT_LABELS = (["negative", "positive"], ["sports", "politics", "science"])
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the", "a", "an", "and", "or", "but", "is", "was", "are", "be", "to", "of", "in", "on", "at", "for", "with",
    "by", "from", "up", "good", "bad", "great", "poor", "fine", "game", "team", "vote", "law", "atom", "cell",
    "star", "ball", "goal", "match", "party", "state", "court", "lab", "test", "data", "film", "book", "song",
    "love", "hate", "like", "play", "win", "lose", "run", "walk", "read", "write", "think", "know", "see",
    "make", "take", "give", "very", "not", "no", "yes", "this", "that", "it", "he", "she", "we", "they", "you",
    "i", "my", "our", "new", "old", "big", "small", "red", "blue", "green", "fast", "slow", "day", "night",
    "year", "time", "world", "city", "home", "school", "work", "life", "water", "food", "music", "art",
]
VOCAB = (SPECIALS + WORDS)[:99]
assert len(VOCAB) == 99 and len(set(VOCAB)) == 99


def _labelled(model: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    return model


def image_processor(size: int = 16):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(do_resize=True, size={"height": size, "width": size}, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def write_vocab(folder: Path, words: list[str] = VOCAB) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return path


def tokenizer(words: list[str] = VOCAB):
    """A BERT WordPiece tokenizer (tokenizers backend) read from a vocab.txt of ``words``.

    transformers 5: ``BertTokenizer(vocab_file=...)`` silently ignores the file (the argument is
    now ``vocab``) and gives a 5-token vocabulary; ``from_pretrained`` on a folder holding only a
    vocab.txt reads it.
    """
    import tempfile

    from transformers import BertTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_vocab(Path(tmp), words)
        tok = BertTokenizer.from_pretrained(tmp, do_lower_case=True, model_max_length=64)
    assert len(tok.get_vocab()) == len(words)
    return tok


def save_vit(folder: Path, seed: int, labels: list[str], dtype=torch.float32, **overrides) -> Path:
    model = _labelled(tiny_model("vit-cls", seed=seed, num_labels=len(labels), dtype=dtype,
                                 **{**VIT_OVERRIDES, **overrides}), labels)
    model.save_pretrained(folder)
    image_processor(model.config.image_size).save_pretrained(folder)
    return folder


def save_bert(folder: Path, seed: int, labels: list[str], dtype=torch.float32, words: list[str] = VOCAB,
              kind: str = "bert-seq", **overrides) -> Path:
    """A text classifier of ``kind`` (a BERT-like key of ``conftest.TINY``) with a WordPiece tokenizer."""
    model = _labelled(tiny_model(kind, seed=seed, num_labels=len(labels), dtype=dtype, **overrides), labels)
    model.save_pretrained(folder)
    tokenizer(words).save_pretrained(folder)
    return folder


def vit_parents(root: Path, seeds=(0, 1)) -> list[Path]:
    return [save_vit(root / f"vit{i}", s, list(VIT_LABELS[i])) for i, s in enumerate(seeds)]


def bert_parents(root: Path, seeds=(0, 1)) -> list[Path]:
    return [save_bert(root / f"bert{i}", s, list(BERT_LABELS[i])) for i, s in enumerate(seeds)]


def save_gpt2(folder: Path) -> Path:
    """An architecture without a unit map."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=99, n_positions=32)).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------ data
def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def images(n: int, size: int = 16, seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB") for _ in range(n)]


def text_dataset(n: int = 24, seed: int = 0, column: str = "text"):
    from datasets import Dataset

    return Dataset.from_dict({column: sentences(n, seed), "label": [i % 2 for i in range(n)]})


def image_dataset(n: int = 24, seed: int = 0, column: str = "image"):
    from datasets import Dataset, Features, Image, Value

    return Dataset.from_dict({column: images(n, seed=seed), "label": [i % 3 for i in range(n)]},
                             features=Features({column: Image(), "label": Value("int64")}))


def save_text_data(root: Path, n: int = 24, seed: int = 0, column: str = "text") -> dict[str, Path]:
    """The same sentences as a save_to_disk folder, a .csv and a .jsonl file."""
    root.mkdir(parents=True, exist_ok=True)
    data = text_dataset(n, seed, column)
    data.save_to_disk(str(root / "text_disk"))
    rows = [{column: t, "label": lab} for t, lab in zip(data[column], data["label"])]
    import csv

    with open(root / "text.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[column, "label"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"disk": root / "text_disk", "csv": root / "text.csv", "jsonl": root / "text.jsonl"}


def save_image_data(root: Path, n: int = 24, seed: int = 0, column: str = "image") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    image_dataset(n, seed, column).save_to_disk(str(root / "image_disk"))
    return root / "image_disk"


# ------------------------------------------------------------------------------ assertions
def weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) safetensors checkpoint."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("model*.safetensors"))
    assert files, f"no safetensors checkpoint in {folder}"
    return {k: v for f in files for k, v in load_file(f).items()}


def weight_bytes(folder: Path) -> dict[str, bytes]:
    """Every tensor of a (possibly sharded) safetensors checkpoint, as raw bytes."""
    return {k: v.contiguous().numpy().tobytes() for k, v in weights(folder).items()}


def _merge_folders(out: Path) -> list[Path]:
    """A merge folder's joint model and every task's folder."""
    return [out] + sorted((out / "tasks").iterdir())


def all_weight_bytes(out: Path) -> dict[str, dict[str, bytes]]:
    """The joint model's and every task's weights of a merge folder."""
    return {str(f.relative_to(out)): weight_bytes(f) for f in _merge_folders(out)}


def all_weights(out: Path) -> dict[str, torch.Tensor]:
    """The joint model's and every task's tensors of a merge folder, by folder/name."""
    return {f"{f.relative_to(out)}/{k}": v for f in _merge_folders(out) for k, v in weights(f).items()}


def assert_weights_close(got: dict, want: dict, scale_tol: float) -> None:
    """Equal names, and every tensor equal to ``scale_tol`` times its largest entry: for merges
    whose float kernels differ (thread counts, batch shapes) and so agree only up to rounding."""
    assert got.keys() == want.keys()
    for name, value in want.items():
        atol = scale_tol * float(value.abs().max()) if value.numel() else 0.0
        torch.testing.assert_close(got[name], value, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative posix path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

"""Shared by the speed benchmarks: parents of a given shape, timing, the descent recorder, results files.

Every results file records the machine, the command line and the date beside its figures.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import re
import resource
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import torch
import transformers as tf

import hf_mudsc.merger

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
SHAPES: dict[str, dict[str, int]] = {  # BERT-base / ViT-base, and half of them
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "small": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
}


def random_parents(family: str, size: str, seeds: tuple[int, ...] = (0, 1)) -> list[tf.PreTrainedModel]:
    """Randomly initialised classifiers of one shape (BERT: 2 labels; ViT at 224 px / 16 px: 5 labels)."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        if family == "bert":
            models.append(tf.BertForSequenceClassification(tf.BertConfig(**SHAPES[size], num_labels=2)).eval())
        else:
            models.append(tf.ViTForImageClassification(tf.ViTConfig(**SHAPES[size], num_labels=5)).eval())
    return models


def random_batches(family: str, samples: int, batch_size: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    """Random token ids (half of every batch padded to half length) or random images."""
    g = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        if family == "bert":
            ids = torch.randint(1000, 30000, (n, seq_len), generator=g)
            mask = torch.ones(n, seq_len, dtype=torch.long)
            mask[n // 2:, seq_len // 2:] = 0
            out.append({"input_ids": ids, "attention_mask": mask})
        else:
            out.append({"pixel_values": torch.randn(n, 3, 224, 224, generator=g)})
    return out


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn``'s result and its wall time in seconds (rounded to ms)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 3)


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far. Linux: ``VmHWM``, which starts afresh in a new
    process (its ``ru_maxrss`` starts at the parent's peak); elsewhere ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.is_file():
        return round(int(re.search(r"VmHWM:\s+(\d+)", status.read_text())[1]) / 2**20, 2)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**30 if sys.platform == "darwin" else 2**20), 2)


def machine() -> dict[str, Any]:
    """What the run ran on."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_results(path: Path, payload: dict[str, Any]) -> Path:
    """``payload`` as JSON at ``path``, after the machine, the command line and the date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    path.write_text(json.dumps({"machine": machine(), "command": command,
                                "date": time.strftime("%Y-%m-%d %H:%M"), **payload}, indent=2) + "\n")
    return path


@contextmanager
def recorded_descent() -> Iterator[list[dict[str, Any]]]:
    """Record every coordinate descent that :class:`hf_mudsc.MuDSCMerger` runs inside the block.

    Per call: the number of solve units, the seconds of the first sweep (activation only, or the
    data-free start), the seconds of each weight sweep (each with the scoring of the transforms
    before it), the scores (``history``: the start's, then each weight sweep's; with no weight
    sweep, the first sweep's) and the seconds of the whole descent (the last scoring included).
    Wraps the merger's ``coordinate_descent`` and its per-unit progress callback.
    """
    records: list[dict[str, Any]] = []
    original = hf_mudsc.merger.coordinate_descent

    def wrapper(units: Sequence[Any], *args: Any, progress: Callable[[str], None] | None = None) -> Any:
        stamps = [time.perf_counter()]

        def tick(name: str) -> None:
            stamps.append(time.perf_counter())
            if progress is not None:
                progress(name)

        result = original(units, *args, progress=tick)
        ends = stamps[::len(units)]  # a sweep ends after every len(units) ticks
        sweeps = [round(b - a, 3) for a, b in itertools.pairwise(ends)]
        records.append({"units": len(units), "first_sweep_s": sweeps[0], "weight_sweeps_s": sweeps[1:],
                        "history": [round(h, 5) for h in result.history],
                        "seconds": round(time.perf_counter() - stamps[0], 3)})
        return result

    hf_mudsc.merger.coordinate_descent = wrapper
    try:
        yield records
    finally:
        hf_mudsc.merger.coordinate_descent = original

"""The frame of the benchmarks that run the default merge and variants of it on the pairs of several
families (``vision``, ``scratch``, ``minilm``): their parents, scoring data and calibration rows,
their command line, and the loop over families and pairs that ends in one results file.

Parents come from the parent cache (trained there first when absent); the pairs and the data are
those of ``vision.py`` and ``text.py``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from common import (  # this folder is on sys.path when the script runs
    calibration_rows,
    pair_definitions,
    summarise,
    summary_table,
    write_results,
)
from transformers import AutoImageProcessor, AutoTokenizer

from hf_mudsc.evaluation import image_batches, text_batches
from parents import fashion_parents, load_fashion_mnist, load_wordnet_topics, text_parents

TEXT_DATA = {"train_per_class": 1000, "test_per_class": 300}  # text.py's defaults
log = partial(print, flush=True)
# (parent folders, scoring batches, calibration rows) -> the pair's rows (parents, ensemble, runs)
ScorePair = Callable[[list[Path], list[Any], Any], list[dict[str, Any]]]


def prepare(family: str, pair: dict[str, Any], num_samples: int) -> tuple[list[Path], list[Any], Any]:
    """The pair's parent folders, scoring batches (whole test sets) and unlabeled calibration rows."""
    if family == "vision":
        paths, tests = fashion_parents(None, seeds=pair["seeds"], groups=pair["classes"])
        scoring = image_batches(tests, AutoImageProcessor.from_pretrained(paths[0]))
        train, classes = load_fashion_mnist(None)["train"], [c for g in pair["classes"] for c in g]
    else:
        paths, tests = text_parents(family, pair["classes"], pair["seeds"], data_seed=0, **TEXT_DATA)
        scoring = text_batches(tests, AutoTokenizer.from_pretrained(paths[0]))
        train, classes = load_wordnet_topics(**TEXT_DATA, seed=0)["train"], range(10)
    return paths, scoring, calibration_rows(train, classes, num_samples, 0)


def arguments(doc: str, families: Sequence[str], num_samples: int) -> argparse.ArgumentParser:
    """The common command line: ``--family`` (default: all of ``families``), ``--pairs``,
    ``--num-samples``, ``--batch-size``; a script adds its own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", choices=tuple(families), default=list(families))
    parser.add_argument("--pairs", type=int, default=None, help="pairs per family (default: 3; MiniLM 2, as text.py)")
    parser.add_argument("--num-samples", type=int, default=num_samples, help="calibration samples")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser


def run_families(name: str, args: argparse.Namespace, score: ScorePair,
                 notes: Callable[[list[dict[str, Any]], list[dict[str, Any]]], str] | None = None) -> Path:
    """Score every pair of every family of ``args`` with ``score``; per family the summary over pairs
    (``notes(pairs, summary)``: text under the family's table, and it may add to the summary);
    ``benchmarks/results/quality_<name>.{json,md}``."""
    start = time.perf_counter()
    families: dict[str, Any] = {}
    tables = []
    for family in args.family:
        pairs = pair_definitions(args.pairs or (2 if family == "minilm" else 3))
        for pair in pairs:
            log(f"[{family}] classes {pair['classes']}, seeds {pair['seeds']}")
            pair["rows"] = score(*prepare(family, pair, args.num_samples))
        summary = summarise([p["rows"] for p in pairs])
        extra = notes(pairs, summary) if notes is not None else ""
        families[family] = {"pairs": pairs, "summary": summary}
        tables.append(f"### {family}\n\n{summary_table(summary)}\n" + (f"\n{extra}\n" if extra else ""))
    return write_families(name, families, tables, args.num_samples, args.batch_size, start, log)


def write_families(name: str, families: dict[str, Any], tables: Sequence[str], num_samples: int, batch_size: int,
                   start: float, log: Callable[[str], None] = print) -> Path:
    """``quality_<name>.{json,md}`` (``families``: per family its pairs and summary; ``tables``: the
    markdown per family)."""
    path = write_results(name, {
        "command": shlex.join(["python", *sys.argv]),
        "calibration": {"num_samples": num_samples, "batch_size": batch_size, "seed": 0,
                        "source": "both tasks' training data, unlabeled"},
        "scoring": "both tasks' test sets (vision: all 1000 images per class; text: 300 texts per topic)",
        "families": families, "seconds": round(time.perf_counter() - start, 1)})
    path.with_suffix(".md").write_text("\n".join(tables))
    log("\n" + "\n".join(tables) + f"\nwrote {path} in {time.perf_counter() - start:.0f} s")
    return path

"""How much calibration data the repairs need: the default merge of 1024 calibration samples with its
repairs on all of them, and on the first 256 only (``repair_samples=256``, which bounds their cost),
on the vision and text-scratch pairs of the quality benchmarks; mean and spread over pairs.

    .venv/bin/python benchmarks/quality/repair_samples.py                 # 3 pairs per family
    .venv/bin/python benchmarks/quality/repair_samples.py --family vision --pairs 1

Parents come from the parent cache (trained there first when absent), the pairs and the data are
those of ``vision.py`` and ``text.py``. Writes ``benchmarks/results/quality_repair_samples.{json,md}``.
"""
from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from common import (  # this folder is on sys.path when the script runs
    calibration_rows,
    pair_definitions,
    score_pair,
    summarise,
    summary_table,
    write_families,
)
from transformers import AutoImageProcessor, AutoTokenizer

from hf_mudsc.evaluation import image_batches, text_batches
from parents import fashion_parents, load_fashion_mnist, load_wordnet_topics, text_parents

TEXT_DATA = {"train_per_class": 1000, "test_per_class": 300}  # text.py's defaults
log = partial(print, flush=True)


def runs(cap: int) -> list[tuple[str, dict[str, Any]]]:
    return [("default, repairs on every sample", {"method": "mudsc", "repair_samples": None}),
            (f"default, repairs on the first {cap}", {"method": "mudsc", "repair_samples": cap})]


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", choices=("vision", "scratch"), default=["vision", "scratch"])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=1024, help="calibration samples")
    parser.add_argument("--repair-samples", type=int, default=256, help="the capped run's repair samples")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    families: dict[str, Any] = {}
    tables = []
    for family in args.family:
        pairs = pair_definitions(args.pairs)
        for pair in pairs:
            log(f"[{family}] classes {pair['classes']}, seeds {pair['seeds']}")
            paths, scoring, calibration = prepare(family, pair, args.num_samples)
            pair["rows"] = score_pair(paths, scoring, calibration, runs(args.repair_samples),
                                      num_samples=args.num_samples, batch_size=args.batch_size, log=log)
        summary = summarise([p["rows"] for p in pairs])
        families[family] = {"pairs": pairs, "summary": summary}
        tables.append(f"### {family}\n\n{summary_table(summary)}\n")
    write_families("repair_samples", families, tables, args.num_samples, args.batch_size, start, log)


if __name__ == "__main__":
    main()

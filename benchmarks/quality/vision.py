"""Vision quality benchmark: ViT pairs trained from different seeds on disjoint 5+5 class splits
of Fashion-MNIST, every merge method, an alpha sweep and a partial-merge sweep; mean and spread
over pairs.

    .venv/bin/python benchmarks/quality/vision.py            # 3 pairs
    .venv/bin/python benchmarks/quality/vision.py --pairs 5  # 2 more random splits

Pair 1: classes 0-4 | 5-9, seeds 0, 1; pair 2: even | odd, seeds 2, 3; pair k >= 3: a random
split (numpy seeds 0, 1, ... in turn, skipping a split already used), seeds 2k - 2, 2k - 1.
Parents are trained once into the default parent cache (~2 min each on one core). Writes
``benchmarks/results/quality_vision.{json,md,png}`` and ``quality_vision_sweeps.png``.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from common import (  # this folder is on sys.path when the script runs
    benchmark_runs,
    calibration_rows,
    pair_definitions,
    report,
    score_pairs,
)
from transformers import AutoImageProcessor

from hf_mudsc.evaluation import image_batches
from parents import FASHION_MNIST_CLASSES, fashion_parents, load_fashion_mnist

NUM_LAYERS = 4
DEPTHS = range(1, NUM_LAYERS)
RUNS = benchmark_runs(DEPTHS, NUM_LAYERS)
log = partial(print, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="number of parent pairs (at least 1)")
    parser.add_argument("--num-samples", type=int, default=256, help="calibration images")
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch size")
    parser.add_argument("--calibration-seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    parser.add_argument("--test-per-class", type=int, default=1000,
                        help="test images scored per class (a seeded draw; 1000 = the whole test set)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")

    start = time.perf_counter()
    train = load_fashion_mnist(args.root)["train"]

    def prepare(pair: dict[str, Any]) -> tuple[list[Path], list[Any], Any, list[list[str]]]:
        paths, tests = fashion_parents(args.root, seeds=pair["seeds"], groups=pair["classes"])
        tests = [t.shuffle(seed=0).select(range(min(len(t), args.test_per_class * len(g))))
                 for t, g in zip(tests, pair["classes"])]
        scoring = image_batches(tests, AutoImageProcessor.from_pretrained(paths[0]))
        calibration = calibration_rows(train, [c for g in pair["classes"] for c in g], args.num_samples,
                                       args.calibration_seed)
        return paths, scoring, calibration, [[FASHION_MNIST_CLASSES[c] for c in g] for g in pair["classes"]]

    pairs = pair_definitions(args.pairs)
    score_pairs(pairs, prepare, RUNS, num_samples=args.num_samples, batch_size=args.batch_size, log=log)
    report("vision", "Fashion-MNIST ViT pairs", pairs, RUNS, (DEPTHS, NUM_LAYERS), {
        "calibration": {"num_samples": args.num_samples, "batch_size": args.batch_size,
                        "seed": args.calibration_seed, "source": "both tasks' training images, unlabeled"},
        "scoring": f"both tasks' test sets, {args.test_per_class} images per class on average (seeded draw)",
    }, start, log=log)


if __name__ == "__main__":
    main()

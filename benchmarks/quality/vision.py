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
import json
import shlex
import sys
import time
from collections.abc import Sequence
from functools import partial

from common import (  # this folder is on sys.path when the script runs
    METHOD_RUNS,
    PARENT_ROWS,
    RESULTS_DIR,
    alpha_runs,
    calibration_rows,
    pair_definitions,
    partial_runs,
    plot_summary,
    plot_sweeps,
    score_pair,
    summarise,
    summary_table,
    write_results,
)
from transformers import AutoImageProcessor

from hf_mudsc.evaluation import format_table, image_batches
from hf_mudsc.parents import FASHION_MNIST_CLASSES, fashion_parents, load_fashion_mnist

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
NUM_LAYERS = 4
RUNS = METHOD_RUNS + alpha_runs([a for a in ALPHAS if a != 0.5]) + partial_runs(range(1, NUM_LAYERS), NUM_LAYERS)
log = partial(print, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="number of parent pairs (at least 1)")
    parser.add_argument("--num-samples", type=int, default=256, help="calibration images")
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch size")
    parser.add_argument("--calibration-seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")

    start = time.perf_counter()
    train = load_fashion_mnist(args.root)["train"]
    pairs = pair_definitions(args.pairs)
    for i, pair in enumerate(pairs, 1):
        log(f"pair {i}/{len(pairs)}: classes {pair['classes']}, seeds {pair['seeds']}")
        tick = time.perf_counter()
        paths, tests = fashion_parents(args.root, seeds=pair["seeds"], groups=pair["classes"])
        log(f"  parents ready: {time.perf_counter() - tick:.0f} s")
        scoring = image_batches(tests, AutoImageProcessor.from_pretrained(paths[0]))
        calibration = calibration_rows(train, [c for g in pair["classes"] for c in g], args.num_samples,
                                       args.calibration_seed)
        pair["rows"] = score_pair(paths, scoring, calibration, RUNS, num_samples=args.num_samples,
                                  batch_size=args.batch_size, log=log)
        pair["class_names"] = [[FASHION_MNIST_CLASSES[c] for c in g] for g in pair["classes"]]
        pair["parents"] = [{"folder": str(p), "recipe": json.loads((p / "parent_recipe.json").read_text())}
                           for p in paths]
        pair["seconds"] = round(time.perf_counter() - tick, 1)
        log(format_table(pair["rows"], ["model", "joint", "per_task", "by_task", "seconds"]))

    summary = summarise([p["rows"] for p in pairs])
    main_names = set(PARENT_ROWS) | {n for n, _ in METHOD_RUNS}
    path = write_results("vision", {
        "command": shlex.join(["python", *sys.argv]),
        "calibration": {"num_samples": args.num_samples, "batch_size": args.batch_size,
                        "seed": args.calibration_seed, "source": "both tasks' training images, unlabeled"},
        "scoring": "both tasks' full test sets (1000 images per class)",
        "runs": [{"model": n, **o} for n, o in RUNS],
        "pairs": pairs,
        "summary": summary,
        "seconds": round(time.perf_counter() - start, 1),
    })
    plot_summary([e for e in summary if e["model"] in main_names], RESULTS_DIR / "quality_vision.png",
                 f"Fashion-MNIST ViT pairs ({len(pairs)} pairs)")
    plot_sweeps(summary, RESULTS_DIR / "quality_vision_sweeps.png", "Fashion-MNIST ViT pairs: MuDSC zip sweeps",
                ALPHAS, range(1, NUM_LAYERS), NUM_LAYERS)
    log("\n" + summary_table(summary))
    log(f"\nwrote {path} and its .md/.png in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

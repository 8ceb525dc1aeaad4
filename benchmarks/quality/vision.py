"""Vision quality benchmark: ViT pairs trained from different seeds on disjoint 5+5 class splits
of Fashion-MNIST, every merge method, an alpha sweep and a partial-merge sweep; mean and spread
over pairs.

    .venv/bin/python benchmarks/quality/vision.py            # 3 pairs
    .venv/bin/python benchmarks/quality/vision.py --pairs 5  # 2 more random splits

Pair 1: classes 0-4 | 5-9, seeds 0, 1; pair 2: even | odd, seeds 2, 3; pair k >= 3: a random
split (numpy seeds 0, 1, ... in turn, skipping a split already used), seeds 2k - 2, 2k - 1. Parents are trained once into the default parent
cache (~2 min each on one core). Writes ``benchmarks/results/quality_vision.{json,md,png}`` and
``quality_vision_sweeps.png``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from common import (  # this folder is on sys.path when the script runs
    METHOD_RUNS,
    PARENT_ROWS,
    RESULTS_DIR,
    alpha_runs,
    partial_runs,
    plot_summary,
    score_pair,
    summarise,
    summary_table,
    write_results,
)
from datasets import Dataset
from transformers import AutoImageProcessor

from hf_mudsc.evaluation import format_table, image_batches
from hf_mudsc.parents import FASHION_MNIST_CLASSES, fashion_parents, load_fashion_mnist

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
NUM_LAYERS = 4
FULL_MERGE = "MuDSC zip (alpha 0.5)"  # the alpha = 0.5 and all-layers point of both sweeps
RUNS = METHOD_RUNS + alpha_runs([a for a in ALPHAS if a != 0.5]) + partial_runs(range(1, NUM_LAYERS), NUM_LAYERS)
log = partial(print, flush=True)


def pair_definitions(count: int) -> list[dict[str, Any]]:
    """``count`` pairs, each a different class split and a different seed pair."""
    pairs = [{"classes": [list(range(5)), list(range(5, 10))], "seeds": [0, 1]},
             {"classes": [list(range(0, 10, 2)), list(range(1, 10, 2))], "seeds": [2, 3]}]
    split_seed = 0
    while len(pairs) < count:
        perm = np.random.default_rng(split_seed).permutation(10)
        classes = [sorted(int(c) for c in perm[:5]), sorted(int(c) for c in perm[5:])]
        if all(sorted(classes) != sorted(p["classes"]) for p in pairs):
            pairs.append({"classes": classes, "seeds": [2 * len(pairs), 2 * len(pairs) + 1], "split_seed": split_seed})
        split_seed += 1
    return pairs[:count]


def calibration_images(train: Dataset, classes: Sequence[int], num_samples: int, seed: int) -> Dataset:
    """``num_samples`` unlabeled training images drawn (seeded) from the given classes."""
    pool = np.flatnonzero(np.isin(np.asarray(train["label"]), classes))
    picks = np.random.default_rng(seed).choice(pool, size=num_samples, replace=False)
    return train.select(np.sort(picks)).remove_columns("label")


def plot_sweeps(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    """Joint and per-task accuracy against alpha and against merged layers (mean, min-max band)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {e["model"]: e for e in summary}
    alpha_names = {o["alpha"]: n for n, o in alpha_runs(ALPHAS)} | {0.5: FULL_MERGE}
    layer_names = {o["merge_layers"]: n for n, o in partial_runs(range(1, NUM_LAYERS), NUM_LAYERS)}
    sweeps = (("alpha (0 = activations only, 1 = weights only)", sorted(alpha_names.items())),
              (f"merged layers (of {NUM_LAYERS}; MuDSC zip, alpha 0.5)",
               sorted((layer_names | {NUM_LAYERS: FULL_MERGE}).items())))
    ensemble = by_name[PARENT_ROWS[2]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (label, points) in zip(axes, sweeps):
        xs = [x for x, _ in points]
        for metric, colour in (("per_task", "tab:blue"), ("joint", "tab:orange")):
            entries = [by_name[n] for _, n in points]
            ax.plot(xs, [e[metric] for e in entries], "o-", color=colour, label=metric.replace("_", " "))
            ax.fill_between(xs, [e[f"{metric}_min"] for e in entries], [e[f"{metric}_max"] for e in entries],
                            color=colour, alpha=0.2)
            ax.axhline(ensemble[metric], color=colour, ls="--", lw=1, label=f"ensemble, {metric.replace('_', ' ')}")
        ax.set_xlabel(label)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy (mean over {ensemble['pairs']} pairs; band: min-max)")
    axes[0].set_ylim(0, 1)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Fashion-MNIST ViT pairs: MuDSC zip sweeps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        calibration = calibration_images(train, [c for g in pair["classes"] for c in g], args.num_samples,
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
    plot_sweeps(summary, RESULTS_DIR / "quality_vision_sweeps.png")
    log("\n" + summary_table(summary))
    log(f"\nwrote {path} and its .md/.png in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

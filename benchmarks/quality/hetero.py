"""Heterogeneous-parent benchmark: Fashion-MNIST ViTs of different depths and widths, trained from
different seeds on disjoint 5+5 class splits (classes 0-4 | 5-9), merged without training, beside the
homogeneous pair of the same tasks.

    .venv/bin/python benchmarks/quality/hetero.py                # 1000 test images per task
    .venv/bin/python benchmarks/quality/hetero.py --test-per-task 5000

Parent A is always the standard 4-layer, 64-wide ViT (seed 0, classes 0-4); parent B (seed 1,
classes 5-9) is the same recipe (homogeneous), 2 layers (depth), 32 wide with 2 heads of the same
head_dim 16 and an FFN of 64 (width), or both; a second depth pair (seeds 2 and 3) checks the choice
between keeping and averaging unpaired layers. Every pair: each parent alone, the ensemble, and
the same merges from one statistics pass (depth pairs with ``unpaired_layers`` keep and average);
the homogeneous pair also plain averaging. Parents are trained once into the parent cache
(~2 min each on one core). Scoring uses a seeded random subset of each task's test set.
Writes ``benchmarks/results/quality_hetero.{json,md}``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from common import PARENT_ROWS, calibration_rows, score_pair, write_results  # this folder is on sys.path
from parents import FASHION_RECIPE, load_fashion_mnist, task_parents
from transformers import AutoImageProcessor

from hf_mudsc import MuDSCMerger
from hf_mudsc.evaluation import format_table, image_batches

GROUPS = (range(5), range(5, 10))
SEEDS = (0, 1)
NARROW = {**FASHION_RECIPE, "hidden_size": 32, "heads": 2, "intermediate": 64}
PAIRS: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {  # parent B's recipe (A: FASHION_RECIPE), seeds
    "homogeneous (4x64 + 4x64)": (FASHION_RECIPE, SEEDS),
    "depth (4x64 + 2x64)": ({**FASHION_RECIPE, "layers": 2}, SEEDS),
    "width (4x64 + 4x32)": (NARROW, SEEDS),
    "depth and width (4x64 + 2x32)": ({**NARROW, "layers": 2}, SEEDS),
    "depth, seeds 2 and 3 (4x64 + 2x64)": ({**FASHION_RECIPE, "layers": 2}, (2, 3)),
}
MERGES: list[tuple[str, dict[str, Any]]] = [
    ("ZipIt!", {"method": "zipit"}),
    ("MuDSC zip, budget 0, no repair", {"method": "mudsc", "mode": "zip", "zip_budget": 0.0, "repair": "none"}),
    ("MuDSC zip, no repair", {"method": "mudsc", "mode": "zip", "repair": "none"}),
    ("default: MuDSC zip + stats, lsq, heads", {"method": "mudsc"}),
]
log = partial(print, flush=True)


def runs_for(pair: str) -> list[tuple[str, dict[str, Any]]]:
    """The merges of one pair: plain averaging where the parents have one shape, both treatments of
    unpaired layers where they have different depths."""
    if pair.startswith("homogeneous"):
        return [("average", {"method": "average"})] + MERGES
    if pair.startswith("depth"):
        return [(f"{name}, unpaired {how}", {**o, "unpaired_layers": how}) for name, o in MERGES for how in ("keep", "average")]
    return MERGES


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=256, help="calibration images")
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch size")
    parser.add_argument("--test-per-task", type=int, default=1000, help="test images scored per task (of 5000)")
    parser.add_argument("--root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = load_fashion_mnist(args.root)
    calibration = calibration_rows(data["train"], list(range(10)), args.num_samples, 0)
    results = []
    for pair, (recipe_b, seeds) in PAIRS.items():
        log(pair)
        paths = []
        for group, seed, recipe in zip(GROUPS, seeds, (FASHION_RECIPE, recipe_b)):
            folder, tests = task_parents(data, [group], [seed], recipe, {"name": "fashion-mnist"})
            paths.append(folder[0])
        tests = [t.shuffle(seed=0).select(range(min(args.test_per_task, len(t))))
                 for t in task_parents(data, GROUPS, SEEDS, FASHION_RECIPE, {"name": "fashion-mnist"})[1]]
        scoring = image_batches(tests, AutoImageProcessor.from_pretrained(paths[0]))
        rows = score_pair(paths, scoring, calibration, runs_for(pair), num_samples=args.num_samples,
                          batch_size=args.batch_size, log=log)
        results.append({"pair": pair, "seeds": list(seeds), "parent_b_recipe": recipe_b,
                        "parents": [str(p) for p in paths], "rows": rows, "layer_alignment": alignment(paths, calibration)})
    verdict = comparisons(results)
    payload = {"command": shlex.join(["python", *sys.argv]),
               "calibration": {"num_samples": args.num_samples, "batch_size": args.batch_size, "seed": 0,
                               "source": "training images of all 10 classes, unlabeled"},
               "scoring": f"a seeded random {args.test_per_task} test images per task",
               "pairs": results, "comparable_to_homogeneous": verdict,
               "seconds": round(time.perf_counter() - start, 1)}
    path = write_results("hetero", payload)
    table = markdown(results, verdict, payload)
    path.with_suffix(".md").write_text(table)
    log("\n" + table)


def alignment(paths: Sequence[Any], calibration: Any) -> dict[str, Any] | None:
    """The layer map and each pair's CKA, for parents of different depths."""
    merger = MuDSCMerger.from_pretrained([str(p) for p in paths], "zipit")
    if not merger.differ_in_depth:
        return None
    merger.collect(calibration, progress=False)
    return merger.depth.to_dict()


def comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Joint accuracy of every heterogeneous merge over that of the same merge of the homogeneous
    pair (same seeds); ``comparable`` when the ratio is at least 0.9. Beside it, each merge's joint
    accuracy as a share of its own pair's ensemble (the parents differ from pair to pair)."""
    homogeneous = {r["model"]: r["joint"] for r in results[0]["rows"]}
    out = []
    for res in [r for r in results[1:] if r["seeds"] == results[0]["seeds"]]:
        ensemble = next(r["joint"] for r in res["rows"] if r["model"] == PARENT_ROWS[2])
        for row in res["rows"]:
            base = row["model"].split(", unpaired")[0]
            if base in homogeneous and base in dict(MERGES):
                ratio = row["joint"] / homogeneous[base]
                out.append({"pair": res["pair"], "model": row["model"], "joint": round(row["joint"], 4),
                            "homogeneous_joint": round(homogeneous[base], 4), "ratio": round(ratio, 3),
                            "comparable": ratio >= 0.9, "of_ensemble": round(row["joint"] / ensemble, 3),
                            "homogeneous_of_ensemble": round(homogeneous[base] / homogeneous[PARENT_ROWS[2]], 3)})
    return out


def markdown(results: list[dict[str, Any]], verdict: list[dict[str, Any]], payload: dict[str, Any]) -> str:
    parts = [f"Command: `{payload['command']}`; {payload['scoring']}; calibration: "
             f"{payload['calibration']['num_samples']} unlabeled training images; {payload['seconds']:.0f} s.\n"]
    for res in results:
        rows = [{"model": r["model"], "joint": _fmt(r["joint"]), "per task": _fmt(r["per_task"]),
                 "task A": _fmt(r["by_task"][0]), "task B": _fmt(r["by_task"][1])} for r in res["rows"]]
        aligned = res["layer_alignment"]
        note = (f"\n\nLayer map (shallow -> deep): {aligned['layer_map']}, pair CKA {aligned['pair_cka']}"
                if aligned else "")
        parts.append(f"### {res['pair']}{note}\n\n" + format_table(rows, ["model", "joint", "per task", "task A", "task B"]))
    rows = [{**v, "comparable": "yes" if v["comparable"] else "no"} for v in verdict]
    parts.append("### Heterogeneous merge / homogeneous merge (joint accuracy; comparable: ratio >= 0.9; "
                 "of_ensemble: joint accuracy / the same pair's ensemble)\n\n"
                 + format_table(rows, ["pair", "model", "joint", "homogeneous_joint", "ratio", "comparable",
                                       "of_ensemble", "homogeneous_of_ensemble"]))
    return "\n\n".join(parts) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()

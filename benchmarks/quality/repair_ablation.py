"""Repair after alignment, ablated: each closed-form repair alone and all together, after three
merges (MuDSC zip as the default solves it, MuDSC zip without a within-model budget, plain
averaging), on cached parent pairs. Joint and per-task accuracy (ZipIt's protocol) and the seconds each repair takes.

    .venv/bin/python benchmarks/quality/repair_ablation.py --family vision scratch minilm --max-test 1000

Pair 1 of each family (``common.pair_definitions``); parents come from the parent cache (trained
there first when absent). ``--max-test`` scores a seeded subset of each task's test set, to keep
the run short on a loaded machine. Repair cost is given in wall seconds, CPU seconds of the process, and
CPU seconds over those of one forward pass of a parent over the calibration data (robust to a loaded
machine). Writes ``benchmarks/results/quality_repair_ablation_<families>.{json,md}``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from functools import partial
from typing import Any, Sequence

from common import calibration_rows, pair_definitions, write_results  # this folder is on sys.path

import torch

from hf_mudsc import MuDSCMerger
from hf_mudsc.data import calibration
from hf_mudsc.evaluation import evaluate_models, format_table, image_batches, text_batches

MERGES: list[tuple[str, dict[str, Any]]] = [
    ("MuDSC zip (the default's solve)", {"method": "mudsc"}),
    ("MuDSC zip budget 0", {"method": "mudsc", "zip_budget": 0.0}),
    ("average", {"method": "average"}),
]
REPAIRS: list[tuple[str, ...]] = [(), ("stats",), ("lsq",), ("heads",), ("stats", "lsq", "heads")]
log = partial(print, flush=True)


def prepare(family: str, max_test: int | None) -> tuple[list[Any], list[Any], Any]:
    """Pair 1's parent folders, scoring batches and unlabeled calibration rows."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from parents import fashion_parents, load_fashion_mnist, load_wordnet_topics, text_parents

    pair = pair_definitions(1)[0]
    if family == "vision":
        paths, tests = fashion_parents(None, seeds=pair["seeds"], groups=pair["classes"])
        train = load_fashion_mnist(None)["train"]
        classes = [c for g in pair["classes"] for c in g]
    else:
        options = {"train_per_class": 1000, "test_per_class": 300}
        paths, tests = text_parents(family, pair["classes"], pair["seeds"], data_seed=0, **options)
        train = load_wordnet_topics(**options, seed=0)["train"]
        classes = range(10)
    if max_test is not None:
        tests = [t.shuffle(seed=0).select(range(min(len(t), max_test))) for t in tests]
    scoring = (image_batches(tests, AutoImageProcessor.from_pretrained(paths[0])) if family == "vision"
               else text_batches(tests, AutoTokenizer.from_pretrained(paths[0])))
    return paths, scoring, calibration_rows(train, classes, 256, 0)


def ablate(family: str, max_test: int | None) -> list[dict[str, Any]]:
    """Every merge of :data:`MERGES` with every repair set of :data:`REPAIRS` on pair 1 of ``family``."""
    paths, scoring, calibration = prepare(family, max_test)
    merger = MuDSCMerger.from_pretrained([str(p) for p in paths], "mudsc")
    rows = [{"family": family, "merge": "ensemble (2x compute)", "repair": "-",
             **_scores(evaluate_models([p.model for p in merger.parents], scoring))}]
    merger.collect(calibration, num_samples=256, batch_size=32, progress=False)
    forward = _forward_seconds(merger, calibration)
    log(f"  {family}: one forward pass of a parent over the calibration data: {forward}")
    for name, overrides in MERGES:
        tick = time.perf_counter()
        transforms, report = merger.solve(progress=False, **overrides)
        solve_seconds = time.perf_counter() - tick
        for repair in REPAIRS:
            config = merger.config.with_updates(**overrides, repair=repair)
            tick = time.perf_counter()
            result = merger.apply(transforms, config, report)
            seconds = {r["repair"]: r["seconds"] for r in result.repairs}
            cpu = {r["repair"]: r["cpu_seconds"] for r in result.repairs}
            rows.append({"family": family, "merge": name, "repair": "+".join(repair) or "none",
                         **_scores(evaluate_models(result.task_models, scoring)),
                         "repair_seconds": seconds, "repair_cpu_seconds": cpu,
                         "repair_in_forward_passes": {k: round(v / forward["cpu_seconds"], 1) for k, v in cpu.items()},
                         "apply_seconds": round(time.perf_counter() - tick, 2), "solve_seconds": round(solve_seconds, 2),
                         "forward_pass": forward})
            log(f"  {family} | {name} | {rows[-1]['repair']}: joint {rows[-1]['joint']:.3f}, "
                f"per task {rows[-1]['per_task']:.3f}, repair s {seconds}")
    return rows


def _forward_seconds(merger: MuDSCMerger, rows: Any) -> dict[str, float]:
    """Wall and CPU seconds of one forward pass of parent 0 over the calibration data: the unit of repair cost."""
    first = merger.parents[0]
    batches = list(calibration(rows, first.processor, first.modality, num_samples=256, batch_size=32))
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for batch in batches:
            first.model(**batch)
    return {"seconds": round(time.perf_counter() - start, 3), "cpu_seconds": round(time.process_time() - cpu, 3)}


def _scores(scores: dict[str, Any]) -> dict[str, Any]:
    return {"joint": scores["joint"], "per_task": scores["per_task"], "by_task": scores["per_task_by_task"]}


def _joined(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in values.items())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", choices=("vision", "scratch", "minilm"), default=["vision", "scratch"])
    parser.add_argument("--max-test", type=int, default=None, help="test examples per task (default: all)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = [row for family in args.family for row in ablate(family, args.max_test)]
    table = format_table([{**r, "seconds": _joined(r.get("repair_seconds", {})),
                           "CPU s": _joined(r.get("repair_cpu_seconds", {})),
                           "forward passes": _joined(r.get("repair_in_forward_passes", {}))}
                          for r in rows], ["family", "merge", "repair", "joint", "per_task", "seconds", "CPU s",
                                           "forward passes"])
    path = write_results("repair_ablation_" + "_".join(args.family), {
        "command": shlex.join(["python", *sys.argv]),
        "pairs": "pair 1 of each family (classes 0-4 | 5-9, seeds 0, 1)",
        "calibration": {"num_samples": 256, "batch_size": 32, "seed": 0, "source": "both tasks' training data, unlabeled"},
        "scoring": f"{args.max_test or 'all'} test examples per task",
        "rows": rows, "seconds": round(time.perf_counter() - start, 1)})
    path.with_suffix(".md").write_text(table + "\n")
    log("\n" + table + f"\n\nwrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

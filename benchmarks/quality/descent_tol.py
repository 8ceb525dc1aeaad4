"""When to stop the coordinate descent: the default merge with the descent's stopping tolerance
``tol`` at 1e-4 (the previous default) and at 1e-3 (the default), and with one weight sweep only
(``max_sweeps=1``), on the pairs of the quality benchmarks; accuracy, the weight sweeps each run
did and the descent's scores; mean and spread over pairs. A weight sweep costs 20-50 s at BERT-base
(README, Speed and memory), and the later ones gain a few 1e-4 of the score there: this measures
what they are worth in accuracy.

    .venv/bin/python benchmarks/quality/descent_tol.py        # 3 vision, 3 scratch and 2 MiniLM pairs
    .venv/bin/python benchmarks/quality/descent_tol.py --family vision --pairs 1

Parents, pairs and data are those of ``repair_samples.py`` (the parent cache; trained there first
when absent). Writes ``benchmarks/results/quality_descent_tol.{json,md}``.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from common import pair_definitions, score_pair, summarise, summary_table, write_families
from repair_samples import prepare

log = partial(print, flush=True)
RUNS: list[tuple[str, dict[str, Any]]] = [  # max_sweeps 4 and patience 1 (the defaults) unless given
    ("tol 1e-4 (the previous default)", {"method": "mudsc", "tol": 1e-4}),
    ("default: tol 1e-3", {"method": "mudsc", "tol": 1e-3}),
    ("one weight sweep (max_sweeps=1)", {"method": "mudsc", "max_sweeps": 1}),
]


def _recorded_descent() -> Any:
    """``benchmarks/speed/common.recorded_descent`` (that folder's ``common`` shares this one's name)."""
    spec = importlib.util.spec_from_file_location("speed_common", Path(__file__).parents[1] / "speed" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.recorded_descent


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", choices=("vision", "scratch", "minilm"),
                        default=["vision", "scratch", "minilm"])
    parser.add_argument("--pairs", type=int, default=None, help="pairs per family (default: 3; MiniLM 2, as text.py)")
    parser.add_argument("--num-samples", type=int, default=256, help="calibration samples")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    recorded_descent = _recorded_descent()
    start = time.perf_counter()
    families: dict[str, Any] = {}
    tables = []
    for family in args.family:
        pairs = pair_definitions(args.pairs or (2 if family == "minilm" else 3))
        for pair in pairs:
            log(f"[{family}] classes {pair['classes']}, seeds {pair['seeds']}")
            paths, scoring, calibration = prepare(family, pair, args.num_samples)
            with recorded_descent() as descents:
                rows = score_pair(paths, scoring, calibration, RUNS, num_samples=args.num_samples,
                                  batch_size=args.batch_size, log=log)
            for row, descent in zip(rows[-len(RUNS):], descents):  # one descent per run, in order
                row["weight_sweeps"], row["history"] = len(descent["weight_sweeps_s"]), descent["history"]
                log(f"  {row['model']}: {row['weight_sweeps']} weight sweeps, scores {row['history']}")
            pair["rows"] = rows
        summary = summarise([p["rows"] for p in pairs])
        for entry in summary:
            sweeps = [r["weight_sweeps"] for p in pairs for r in p["rows"] if r["model"] == entry["model"]
                      and "weight_sweeps" in r]
            if sweeps:
                entry["weight_sweeps_mean"] = statistics.fmean(sweeps)
        families[family] = {"pairs": pairs, "summary": summary}
        sweeps = "\n".join(f"- {e['model']}: {e['weight_sweeps_mean']:.1f} weight sweeps on average"
                           for e in summary if "weight_sweeps_mean" in e)
        tables.append(f"### {family}\n\n{summary_table(summary)}\n\n{sweeps}\n")
    write_families("descent_tol", families, tables, args.num_samples, args.batch_size, start, log)


if __name__ == "__main__":
    main()

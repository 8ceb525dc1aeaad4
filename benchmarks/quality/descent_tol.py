"""When to stop the coordinate descent: the default merge with the descent's stopping tolerance
``tol`` at 1e-4 (the previous default) and at 1e-3 (the default), and with one weight sweep only
(``max_sweeps=1``), on the pairs of the quality benchmarks; accuracy, the weight sweeps each run
did and the descent's scores; mean and spread over pairs. A weight sweep costs 20-50 s at BERT-base
(README, Speed and memory), and the later ones gain a few 1e-4 of the score there: this measures
what they are worth in accuracy.

    .venv/bin/python benchmarks/quality/descent_tol.py        # 3 vision, 3 scratch and 2 MiniLM pairs
    .venv/bin/python benchmarks/quality/descent_tol.py --family vision --pairs 1

Parents, pairs and data: :mod:`families`. Writes ``benchmarks/results/quality_descent_tol.{json,md}``.
"""
from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path
from typing import Any, Sequence

from common import score_pair  # this folder is on sys.path when the script runs
from families import arguments, log, run_families

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
    args = arguments(__doc__, ("vision", "scratch", "minilm"), num_samples=256).parse_args(argv)
    recorded_descent = _recorded_descent()

    def score(paths: list[Path], scoring: list[Any], rows: Any) -> list[dict[str, Any]]:
        with recorded_descent() as descents:
            scored = score_pair(paths, scoring, rows, RUNS, num_samples=args.num_samples,
                                batch_size=args.batch_size, log=log)
        for row, descent in zip(scored[-len(RUNS):], descents):  # one descent per run, in order
            row["weight_sweeps"], row["history"] = len(descent["weight_sweeps_s"]), descent["history"]
            log(f"  {row['model']}: {row['weight_sweeps']} weight sweeps, scores {row['history']}")
        return scored

    def sweeps(pairs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
        for entry in summary:
            counts = [r["weight_sweeps"] for p in pairs for r in p["rows"] if r["model"] == entry["model"]
                      and "weight_sweeps" in r]
            if counts:
                entry["weight_sweeps_mean"] = statistics.fmean(counts)
        return "\n".join(f"- {e['model']}: {e['weight_sweeps_mean']:.1f} weight sweeps on average"
                         for e in summary if "weight_sweeps_mean" in e)

    run_families("descent_tol", args, score, sweeps)


if __name__ == "__main__":
    main()

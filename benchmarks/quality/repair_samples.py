"""How much calibration data the repairs need: the default merge of 1024 calibration samples with its
repairs on all of them, and on the first 256 only (``repair_samples=256``, which bounds their cost),
on the vision and text-scratch pairs of the quality benchmarks; mean and spread over pairs.

    .venv/bin/python benchmarks/quality/repair_samples.py                 # 3 pairs per family
    .venv/bin/python benchmarks/quality/repair_samples.py --family vision --pairs 1

Parents, pairs and data: :mod:`families`. Writes ``benchmarks/results/quality_repair_samples.{json,md}``.
"""
from __future__ import annotations

from typing import Any, Sequence

from common import score_pair  # this folder is on sys.path when the script runs
from families import arguments, log, run_families


def runs(cap: int) -> list[tuple[str, dict[str, Any]]]:
    return [("default, repairs on every sample", {"method": "mudsc", "repair_samples": None}),
            (f"default, repairs on the first {cap}", {"method": "mudsc", "repair_samples": cap})]


def main(argv: Sequence[str] | None = None) -> None:
    parser = arguments(__doc__, ("vision", "scratch"), num_samples=1024)
    parser.add_argument("--repair-samples", type=int, default=256, help="the capped run's repair samples")
    args = parser.parse_args(argv)
    run_families("repair_samples", args, lambda paths, scoring, rows: score_pair(
        paths, scoring, rows, runs(args.repair_samples), num_samples=args.num_samples, batch_size=args.batch_size,
        log=log))


if __name__ == "__main__":
    main()

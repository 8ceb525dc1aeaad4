"""How much calibration data the statistics and the repairs need: the default merge of 1024
calibration samples with its statistics and repairs on every sample, with its statistics on the
first 256 or 512 only (``statistics_samples``; repairs on all), and with its repairs on the first
256 or 512 only (``repair_samples``; statistics on all), on the vision, text-scratch and MiniLM
pairs of the quality benchmarks; mean and spread over pairs. Each cap bounds a pass's cost on much
data: the statistics pass runs both parents over the samples it reads, the repairs run each model
once more over theirs.

    .venv/bin/python benchmarks/quality/calibration_samples.py     # 3 pairs per family, MiniLM 2
    .venv/bin/python benchmarks/quality/calibration_samples.py --family vision --pairs 1 --caps 256
    .venv/bin/python benchmarks/quality/calibration_samples.py --caps 256 --name calibration_samples_256

Parents, pairs and data: :mod:`families`. Writes ``benchmarks/results/quality_calibration_samples.{json,md}``
(``--name``: another name).
"""
from __future__ import annotations

from typing import Any, Sequence

from common import score_pair  # this folder is on sys.path when the script runs
from families import arguments, log, run_families

from hf_mudsc import MergeConfig


def runs(caps: Sequence[int]) -> list[tuple[str, dict[str, Any]]]:
    default = MergeConfig().statistics_samples

    def named(cap: int) -> str:
        return f"statistics on the first {cap}" + (" (the default)" if cap == default else "")

    return [("statistics and repairs on every sample", {"statistics_samples": None, "repair_samples": None}),
            *((named(cap), {"statistics_samples": cap, "repair_samples": None}) for cap in caps),
            *((f"repairs on the first {cap}", {"statistics_samples": None, "repair_samples": cap}) for cap in caps)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = arguments(__doc__, ("vision", "scratch", "minilm"), num_samples=1024)
    parser.add_argument("--caps", type=int, nargs="+", default=[256, 512],
                        help="the capped runs' statistics_samples and repair_samples")
    parser.add_argument("--name", default="calibration_samples", help="results file name after 'quality_'")
    args = parser.parse_args(argv)
    run_families(args.name, args, lambda paths, scoring, rows: score_pair(
        paths, scoring, rows, runs(args.caps), num_samples=args.num_samples, batch_size=args.batch_size, log=log))


if __name__ == "__main__":
    main()

"""How many tokens per batch the repairs need: the default merge with its repairs fitting each map
on 256 (the default), 128 and 64 tokens per batch (``repair_tokens_per_batch``; the statistics keep
their own cap, ``max_tokens_per_batch``), on the vision, text-scratch and MiniLM pairs of the quality
benchmarks; mean and spread over pairs. Fewer tokens make the repairs' ridge sums cheaper; the models
run over every token of every sample either way.

    .venv/bin/python benchmarks/quality/repair_tokens.py                     # 1024 samples, 3 pairs per family, MiniLM 2
    .venv/bin/python benchmarks/quality/repair_tokens.py --num-samples 256   # the default number of samples
    .venv/bin/python benchmarks/quality/repair_tokens.py --caps 256 --name repair_tokens_1024_apart  # the default alone

Parents, pairs and data: :mod:`families`. Writes
``benchmarks/results/quality_repair_tokens_<num-samples>.{json,md}``.
"""
from __future__ import annotations

from typing import Any, Sequence

from common import score_pair  # this folder is on sys.path when the script runs
from families import arguments, log, run_families

from hf_mudsc import MergeConfig


def runs(caps: Sequence[int]) -> list[tuple[str, dict[str, Any]]]:
    default = MergeConfig().repair_tokens_per_batch
    return [(f"repairs on {cap} tokens per batch" + (" (the default)" if cap == default else ""),
             {"repair_tokens_per_batch": cap}) for cap in caps]


def main(argv: Sequence[str] | None = None) -> None:
    parser = arguments(__doc__, ("vision", "scratch", "minilm"), num_samples=1024)
    parser.add_argument("--caps", type=int, nargs="+", default=[256, 128, 64],
                        help="the runs' repair_tokens_per_batch")
    parser.add_argument("--name", default=None,
                        help="results file name after 'quality_' (default: repair_tokens_<num-samples>)")
    args = parser.parse_args(argv)
    run_families(args.name or f"repair_tokens_{args.num_samples}", args, lambda paths, scoring, rows: score_pair(
        paths, scoring, rows, runs(args.caps), num_samples=args.num_samples, batch_size=args.batch_size, log=log))


if __name__ == "__main__":
    main()

"""Calibration texts batched by length (the default) against batches in drawn order: the default
merge on the text pairs of the quality benchmarks, from the same drawn rows either way; mean and
spread over pairs. Batching by length cuts the padding that every model run computes (DESIGN §2);
without a token cap the statistics and the repairs would differ by rounding only, with the default
cap of 256 tokens per batch they sample other tokens, and this measures what that does to accuracy.

    .venv/bin/python benchmarks/quality/batching.py                  # 3 scratch and 2 MiniLM pairs
    .venv/bin/python benchmarks/quality/batching.py --family scratch --pairs 1

Parents, pairs and data: :mod:`families`. Writes ``benchmarks/results/quality_batching.{json,md}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from common import score_pair  # this folder is on sys.path when the script runs
from families import arguments, log, run_families
from transformers import AutoTokenizer

from hf_mudsc.data import MAX_TEXT_LENGTH, calibration

DEFAULT = ("default, texts batched by length", {"method": "mudsc"})
DRAWN = "default, batches in drawn order"


def drawn_order(rows: Any, tokenizer: Any, num_samples: int, batch_size: int) -> list[dict[str, Any]]:
    """The rows a merge draws from ``rows`` (seed 0), tokenized in drawn order, ``batch_size`` to a
    batch padded to its longest: the batches of a merge before texts were batched by length."""
    drawn = calibration(rows, tokenizer, "text", num_samples=num_samples, batch_size=batch_size, seed=0)
    texts = [rows[int(i)]["text"] for i in drawn.indices]
    return [dict(tokenizer(texts[k:k + batch_size], padding=True, truncation=True, max_length=MAX_TEXT_LENGTH,
                           return_tensors="pt")) for k in range(0, num_samples, batch_size)]


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments(__doc__, ("scratch", "minilm"), num_samples=256).parse_args(argv)

    def score(paths: list[Path], scoring: list[Any], rows: Any) -> list[dict[str, Any]]:
        by_length = score_pair(paths, scoring, rows, [DEFAULT], num_samples=args.num_samples,
                               batch_size=args.batch_size, log=log)
        ready = drawn_order(rows, AutoTokenizer.from_pretrained(paths[0]), args.num_samples, args.batch_size)
        *_, drawn = score_pair(paths, scoring, ready, [(DRAWN, DEFAULT[1])], num_samples=args.num_samples,
                               batch_size=args.batch_size, log=log)
        return [*by_length, drawn]

    run_families("batching", args, score)


if __name__ == "__main__":
    main()

"""Calibration texts batched by length (the default) against batches in drawn order: the default
merge on the text pairs of the quality benchmarks, from the same drawn rows either way; mean and
spread over pairs. Batching by length cuts the padding that every model run computes (DESIGN §2);
without a token cap the statistics and the repairs would differ by rounding only, with the default
cap of 256 tokens per batch they sample other tokens, and this measures what that does to accuracy.

    .venv/bin/python benchmarks/quality/batching.py                  # 3 scratch and 2 MiniLM pairs
    .venv/bin/python benchmarks/quality/batching.py --family scratch --pairs 1

Parents, pairs and data are those of ``repair_samples.py`` (the parent cache; trained there first
when absent). Writes ``benchmarks/results/quality_batching.{json,md}``.
"""
from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Any, Sequence

from common import pair_definitions, score_pair, summarise, summary_table, write_families
from repair_samples import prepare
from transformers import AutoTokenizer

from hf_mudsc.data import MAX_TEXT_LENGTH, calibration

log = partial(print, flush=True)
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", choices=("scratch", "minilm"), default=["scratch", "minilm"])
    parser.add_argument("--pairs", type=int, default=None, help="pairs per family (default: 3; MiniLM 2, as text.py)")
    parser.add_argument("--num-samples", type=int, default=256, help="calibration texts")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    families: dict[str, Any] = {}
    tables = []
    for family in args.family:
        pairs = pair_definitions(args.pairs or (2 if family == "minilm" else 3))
        for pair in pairs:
            log(f"[{family}] classes {pair['classes']}, seeds {pair['seeds']}")
            paths, scoring, rows = prepare(family, pair, args.num_samples)
            scored = score_pair(paths, scoring, rows, [DEFAULT], num_samples=args.num_samples,
                                batch_size=args.batch_size, log=log)
            ready = drawn_order(rows, AutoTokenizer.from_pretrained(paths[0]), args.num_samples, args.batch_size)
            (*_, old) = score_pair(paths, scoring, ready, [(DRAWN, DEFAULT[1])], num_samples=args.num_samples,
                                   batch_size=args.batch_size, log=log)
            pair["rows"] = [*scored, old]
        summary = summarise([p["rows"] for p in pairs])
        families[family] = {"pairs": pairs, "summary": summary}
        tables.append(f"### {family}\n\n{summary_table(summary)}\n")
    write_families("batching", families, tables, args.num_samples, args.batch_size, start, log)


if __name__ == "__main__":
    main()

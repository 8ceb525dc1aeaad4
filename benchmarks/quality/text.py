"""Text quality benchmark: BERT pairs on disjoint 5+5 splits of 10 WordNet noun topics, every merge
method, an alpha sweep and a partial-merge sweep; mean and spread over pairs.

    .venv/bin/python benchmarks/quality/text.py --family both         # 3 scratch pairs, 2 MiniLM pairs
    .venv/bin/python benchmarks/quality/text.py --family minilm --pairs 3
    .venv/bin/python benchmarks/quality/text.py --family distilbert   # 3 pairs of small DistilBERTs

Families: ``scratch``, small BERTs (4 x 128) trained from different seeds (different
initialisations); ``minilm``, fine-tunes of all-MiniLM-L6-v2 (6 x 384; the shared-initialisation
case); ``distilbert``, DistilBERTs of the scratch shape from different seeds. Texts are ``"<lemma>: <gloss>"`` from Debian's ``wordnet-base``, labelled with their
lexicographer category. Pairs (``common.pair_definitions``): topics 0-4 | 5-9 with seeds 0, 1;
even | odd with seeds 2, 3; then seeded random splits. Parents are trained once into the default
parent cache. Writes ``benchmarks/results/quality_text_<family>.{json,md,png}`` and
``quality_text_<family>_sweeps.png``.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from common import (  # this folder is on sys.path when the script runs
    benchmark_runs,
    calibration_rows,
    pair_definitions,
    report,
    score_pairs,
)
from transformers import AutoTokenizer

from hf_mudsc.evaluation import text_batches
from parents import WORDNET_TOPICS, load_wordnet_topics, text_parents

# family -> (encoder layers, merged-layer depths of the partial sweep, default pairs, title)
FAMILIES: dict[str, tuple[int, tuple[int, ...], int, str]] = {
    "scratch": (4, (0, 1, 2, 3), 3, "WordNet topics, small BERTs from different seeds"),
    "minilm": (6, (0, 2, 4), 2, "WordNet topics, fine-tunes of all-MiniLM-L6-v2"),
    "distilbert": (4, (0, 1, 2, 3), 3, "WordNet topics, small DistilBERTs from different seeds"),
}
log = partial(print, flush=True)


def run_family(family: str, args: argparse.Namespace) -> None:
    """Score every pair of ``family``; write its results file and plots."""
    num_layers, depths, default_pairs, title = FAMILIES[family]
    data_options = {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class}
    train = load_wordnet_topics(**data_options, seed=args.data_seed)["train"]
    names = list(WORDNET_TOPICS)
    runs = benchmark_runs(depths, num_layers)
    start = time.perf_counter()

    def prepare(pair: dict[str, Any]) -> tuple[list[Path], list[Any], Any, list[list[str]]]:
        paths, tests = text_parents(family, pair["classes"], pair["seeds"], data_seed=args.data_seed, **data_options)
        scoring = text_batches(tests, AutoTokenizer.from_pretrained(paths[0]))
        calibration = calibration_rows(train, range(len(names)), args.num_samples, args.calibration_seed)
        return paths, scoring, calibration, [[names[c] for c in g] for g in pair["classes"]]

    log(f"[{family}]")
    pairs = pair_definitions(args.pairs or default_pairs)
    score_pairs(pairs, prepare, runs, num_samples=args.num_samples, batch_size=args.batch_size, log=log)
    report(f"text_{family}", title, pairs, runs, (depths, num_layers), {
        "family": family,
        "data": {"source": "WordNet 3.0 nouns (Debian wordnet-base), '<lemma>: <gloss>', label = lexicographer topic",
                 "topics": names, "seed": args.data_seed, **data_options},
        "calibration": {"num_samples": args.num_samples, "batch_size": args.batch_size,
                        "seed": args.calibration_seed, "source": "both tasks' training texts, unlabeled"},
        "scoring": f"both tasks' test sets ({args.test_per_class} texts per topic)",
    }, start, log=log)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("scratch", "minilm", "distilbert", "both"), default="both",
                        help="both: scratch and minilm")
    parser.add_argument("--pairs", type=int, default=None, help="parent pairs per family (default: 3 scratch, 2 minilm)")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=300)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the per-topic train/test sample")
    parser.add_argument("--num-samples", type=int, default=256, help="calibration texts")
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch size")
    parser.add_argument("--calibration-seed", type=int, default=0)
    args = parser.parse_args(argv)
    for family in ("scratch", "minilm") if args.family == "both" else (args.family,):
        run_family(family, args)


if __name__ == "__main__":
    main()

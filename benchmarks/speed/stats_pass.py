"""The statistics pass against one plain forward pass of the parents over the same data.

    python benchmarks/speed/stats_pass.py --family bert --size base --samples 16 --seq-len 128
    python benchmarks/speed/stats_pass.py --family vit --size base --samples 16

Two randomly initialised parents of the given shape (BERT-base: 12 layers, 768 wide, 3072 FFN,
12 heads; ViT-base: the same at 224 px / 16 px patches, 197 tokens). Reported side by side in one
run: the plain forward of both parents, the statistics pass without a token cap and with one, and
the peak resident memory. Results go to ``benchmarks/results/speed_statistics_<family>_<size>.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import (
    RESULTS_DIR,
    SHAPES,
    peak_rss_gib,
    random_batches,
    random_parents,
    timed,
    write_results,
)

from hf_mudsc.statistics import collect_statistics
from hf_mudsc.unitmaps import unit_map_of


def forward_all(models: list[torch.nn.Module], data: list[dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for batch in data:
            for m in models:
                m(**batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["bert", "vit"], default="bert")
    ap.add_argument("--size", choices=list(SHAPES), default="base")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per text (BERT only)")
    ap.add_argument("--cap", type=int, default=256, help="max_tokens_per_batch for the capped run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    models = random_parents(args.family, args.size)
    maps = [unit_map_of(m) for m in models]
    data = random_batches(args.family, args.samples, args.batch_size, args.seq_len)
    forward_all(models, data[:1])  # warm-up
    rows = {"forward (both parents)": timed(forward_all, models, data)[1]}
    rows["statistics, every token"] = timed(collect_statistics, models, maps, data, progress=False)[1]
    rows[f"statistics, {args.cap} tokens/batch/site"] = timed(
        collect_statistics, models, maps, data, max_tokens_per_batch=args.cap, progress=False)[1]
    base = rows["forward (both parents)"]
    out = write_results(args.out or RESULTS_DIR / f"speed_statistics_{args.family}_{args.size}.json", {
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds": rows,
        "ratio_to_forward": {k: round(v / base, 2) for k, v in rows.items()},
        "peak_rss_gib": peak_rss_gib(),
    })
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v:8.2f} s  x{v / base:6.2f}")
    print(f"peak RSS {peak_rss_gib()} GiB -> {out}")


if __name__ == "__main__":
    main()

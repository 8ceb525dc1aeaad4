"""The statistics pass against one plain forward pass of the parents over the same data.

    python benchmarks/speed_statistics.py --family bert --size base --samples 16 --seq-len 128
    python benchmarks/speed_statistics.py --family vit --size base --samples 16

Two randomly initialised parents of the given shape (BERT-base: 12 layers, 768 wide, 3072 FFN,
12 heads; ViT-base: the same at 224 px / 16 px patches). Reported side by side in one run: the
plain forward of both parents, the statistics pass without a token cap and with one, and the
peak resident memory. Results go to ``benchmarks/results/speed_statistics_<family>_<size>.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
import transformers as tf

from hf_mudsc.statistics import collect_statistics
from hf_mudsc.unitmaps import unit_map_of

SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def parents(family: str, size: str) -> list[torch.nn.Module]:
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        if family == "bert":
            models.append(tf.BertForSequenceClassification(tf.BertConfig(**SHAPES[size], num_labels=2)).eval())
        else:
            models.append(tf.ViTForImageClassification(tf.ViTConfig(**SHAPES[size], num_labels=5)).eval())
    return models


def batches(family: str, samples: int, batch_size: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        if family == "bert":
            ids = torch.randint(1000, 30000, (n, seq_len), generator=g)
            mask = torch.ones(n, seq_len, dtype=torch.long)
            mask[n // 2:, seq_len // 2:] = 0  # half the batch padded to half length
            out.append({"input_ids": ids, "attention_mask": mask})
        else:
            out.append({"pixel_values": torch.randn(n, 3, 224, 224, generator=g)})
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_all(models, data) -> None:
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
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--cap", type=int, default=256, help="max_tokens_per_batch for the capped run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    models = parents(args.family, args.size)
    maps = [unit_map_of(m) for m in models]
    data = batches(args.family, args.samples, args.batch_size, args.seq_len)
    forward_all(models, data[:1])  # warm-up
    rows = {"forward (both parents)": timed(lambda: forward_all(models, data))}
    rows["statistics, every token"] = timed(lambda: collect_statistics(models, maps, data, progress=False))
    rows[f"statistics, {args.cap} tokens/batch/site"] = timed(
        lambda: collect_statistics(models, maps, data, max_tokens_per_batch=args.cap, progress=False))
    base = rows["forward (both parents)"]
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "setup": vars(args),
        "seconds": {k: round(v, 3) for k, v in rows.items()},
        "ratio_to_forward": {k: round(v / base, 2) for k, v in rows.items()},
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    out = Path(args.out or f"benchmarks/results/speed_statistics_{args.family}_{args.size}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v:8.2f} s  x{v / base:6.2f}")
    print(f"peak RSS {result['peak_rss_gib']} GiB -> {out}")


if __name__ == "__main__":
    main()

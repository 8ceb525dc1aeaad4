"""Kernel rates: the products a BERT-base merge spends its time in, beside the machine's peak.

    OMP_NUM_THREADS=1 python benchmarks/speed/kernel_rates.py

Nearly all of a whole merge's time (``whole_merge.py``) is matrix products: the models' linear
layers (the forwards of the statistics pass and of the repairs), the statistics' outer products,
the weight similarity's Gram blocks, the repairs' ridge sums and their Cholesky solves. This times
each at the shapes a BERT-base merge gives it, through the package's own code where it has one
(``Moments.update``, ``RidgeSums.update`` / ``solve``), and reports its rate in GFLOP/s beside the
rate of a large square product of the same precision (the machine's practical peak). A kernel near
the peak can only get cheaper by doing less arithmetic. Results go to
``benchmarks/results/speed_kernel_rates.json``. (Not named ``kernels.py``: transformers imports a
package of that name.)
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS_DIR, write_results

from hf_mudsc.repair.ridge import GRAM_BLOCK, RidgeSums
from hf_mudsc.statistics.moments import BLOCK, Moments

HIDDEN, FFN, ROWS, TOKENS = 768, 3072, 256, 1255  # BERT-base; sampled rows per batch; tokens per batch of 16 texts


def rate(fn: Callable[[], Any], flops: float, repeats: int) -> dict[str, float]:
    """Seconds per call (best of ``repeats`` after one warm-up) and GFLOP/s."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return {"ms": round(best * 1e3, 2), "gflops": round(flops / best / 1e9, 1)}


def upper_blocks(dim: int, block: int) -> int:
    """Entries of the upper block triangle (blocks of ``block``) of a ``dim`` x ``dim`` matrix."""
    return sum(min(block, dim - i) * (dim - i) for i in range(0, dim, block))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "speed_kernel_rates.json")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    kernels: dict[str, dict[str, Any]] = {}
    for dtype, name in ((torch.float32, "float32"), (torch.float64, "float64")):
        a, b = randn(2048, 2048, dtype=dtype), randn(2048, 2048, dtype=dtype)
        kernels[f"peak: 2048 x 2048 product, {name}"] = rate(lambda a=a, b=b: a @ b, 2 * 2048**3, args.repeats)

    x, w = randn(TOKENS, HIDDEN), randn(FFN, HIDDEN)
    kernels[f"forward: FFN input map, {TOKENS} tokens (float32)"] = rate(
        lambda: F.linear(x, w), 2 * TOKENS * HIDDEN * FFN, args.repeats)

    feats = randn(ROWS, 2 * FFN)
    moments = Moments(2 * FFN).update(feats)
    kernels[f"statistics: FFN space outer products, {ROWS} rows (float32, added in float64)"] = rate(
        lambda: moments.update(feats), 2 * ROWS * upper_blocks(2 * FFN, BLOCK), args.repeats)

    z, block = randn(FFN, 2 * HIDDEN), torch.zeros(FFN, FFN)
    kernels["weight similarity: one FFN Gram block, 3072 x 3072 over 1536 features (float32)"] = rate(
        lambda: block.addmm_(z, z.T), 2 * FFN * FFN * 2 * HIDDEN, args.repeats)

    inputs, wanted = randn(ROWS, FFN), randn(ROWS, HIDDEN)
    sums = RidgeSums(bias=True)
    sums.update(inputs, wanted)
    d = FFN + 1
    kernels[f"repairs: ridge sums of the FFN output map, {ROWS} rows (float64)"] = rate(
        lambda: sums.update(inputs, wanted), 2 * ROWS * (upper_blocks(d, GRAM_BLOCK) + d * HIDDEN), args.repeats)
    weight, bias = randn(HIDDEN, FFN), randn(HIDDEN)
    for _ in range(4 * d // ROWS):  # enough samples for a well-posed system
        sums.update(randn(ROWS, FFN), randn(ROWS, HIDDEN))
    kernels["repairs: ridge solve of the FFN output map, Cholesky of 3073 x 3073, 768 outputs (float64)"] = rate(
        lambda: sums.solve(weight, bias), d**3 / 3 + 2 * d * d * HIDDEN, max(1, args.repeats // 2))

    out = write_results(args.out, {"threads": torch.get_num_threads(), "kernels": kernels})
    for name, k in kernels.items():
        print(f"{k['gflops']:8.1f} GFLOP/s {k['ms']:9.2f} ms  {name}")
    print("->", out)


if __name__ == "__main__":
    main()

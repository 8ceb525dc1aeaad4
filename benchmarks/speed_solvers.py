"""Solver speed: greedy zip (fast vs the plain O(n^3) loop), linear assignment, heads.

    python benchmarks/speed_solvers.py --out benchmarks/results/speed_solvers.json

Inputs: two models of width w whose features are a noisy permutation of each other
(Pearson correlation over 4w samples). Every time is one run, in seconds. The plain
loop is run only where the cube law from its previous width predicts it finishes within
``--plain-budget``; elsewhere it is reported as "skipped" (nothing is extrapolated).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_zip import reference_zip  # noqa: E402

from hf_mudsc.solve import solve_heads, solve_permute, solve_zip  # noqa: E402

ZIP_SETTINGS = [(0.0, 0.0), (0.2, 0.5)]  # (budget, decay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed_solvers.json"))
    parser.add_argument("--widths", type=int, nargs="+",
                        default=[256, 512, 1024, 2048, 3072, 4096])
    parser.add_argument("--plain-budget", type=float, default=60.0,
                        help="seconds the plain O(n^3) loop may take at one width")
    args = parser.parse_args()
    results = {"machine": machine(), "zip": [], "permute": [], "heads": bench_heads()}
    last_plain: dict[tuple[float, float], tuple[int, float]] = {}
    for width in args.widths:
        sim = planted_similarity(width, np.random.default_rng(width))
        results["permute"].append({"width": width, "seconds": timed(solve_permute, sim,
                                                                      [width, width])[1]})
        for budget, decay in ZIP_SETTINGS:
            results["zip"].append(bench_zip(sim, width, budget, decay, last_plain,
                                            args.plain_budget))
        del sim
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "torch": torch.__version__}


def planted_similarity(width: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(width, 4 * width)).astype(np.float32)
    y = x[rng.permutation(width)] + rng.normal(size=x.shape).astype(np.float32)
    return np.corrcoef(np.vstack([x, y])).astype(np.float64)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 3)


def bench_zip(sim: np.ndarray, width: int, budget: float, decay: float,
              last_plain: dict[tuple[float, float], tuple[int, float]],
              plain_budget: float) -> dict[str, Any]:
    """Fast zip and, within the time budget, the plain loop on the same input."""
    sol, fast = timed(solve_zip, sim, [width, width], budget=budget, decay=decay)
    row = {"width": width, "units": 2 * width, "budget": budget, "decay": decay,
           "fast_s": fast, "plain_s": "skipped", "same": None}
    prev = last_plain.get((budget, decay))
    if prev is None or prev[1] * (width / prev[0]) ** 3 <= plain_budget:
        ref, plain = timed(reference_zip, sim, [width, width], budget=budget, decay=decay)
        same = np.unique(np.concatenate(ref), return_inverse=True)[1].reshape(-1)
        row.update(plain_s=plain, same=bool(np.array_equal(same, sol.labels())))
        last_plain[(budget, decay)] = (width, plain)
    return row


def bench_heads(heads: int = 12, head_dim: int = 64) -> list[dict[str, Any]]:
    """Both modes on a QK and a VO space of two models with ``heads x head_dim`` units."""
    rng = np.random.default_rng(0)
    sims = [planted_similarity(heads * head_dim, rng) for _ in range(2)]
    width = heads * head_dim
    return [{"heads": heads, "head_dim": head_dim, "spaces": 2, "mode": mode,
             "seconds": timed(solve_heads, sims, [width, width], heads, head_dim, mode,
                              0.2 if mode == "zip" else 0.0, 0.5)[1]}
            for mode in ("permute", "zip")]


def print_tables(results: dict[str, Any]) -> None:
    print("machine:", ", ".join(f"{k}={v}" for k, v in results["machine"].items()))
    print(f"\n{'zip 2 x w':>10} {'budget':>7} {'decay':>6} {'fast s':>8} {'plain s':>9} same")
    for r in results["zip"]:
        plain = r["plain_s"] if isinstance(r["plain_s"], str) else f"{r['plain_s']:.3f}"
        print(f"{r['width']:>10} {r['budget']:>7} {r['decay']:>6} {r['fast_s']:>8.3f} "
              f"{plain:>9} {'' if r['same'] is None else r['same']}")
    print(f"\n{'LAP 2 x w':>10} {'s':>8}")
    for r in results["permute"]:
        print(f"{r['width']:>10} {r['seconds']:>8.3f}")
    print(f"\n{'heads':>10} {'mode':>8} {'s':>8}")
    for r in results["heads"]:
        print(f"{str(r['heads']) + 'x' + str(r['head_dim']):>10} {r['mode']:>8} "
              f"{r['seconds']:>8.3f}")


if __name__ == "__main__":
    main()

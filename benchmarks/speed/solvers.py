"""Solver speed against width: linear assignment, greedy zip (fast vs the plain O(n^3) loop),
head groups, and the coordinate descent of a whole MuDSC solve (seconds per sweep, sweeps).

    python benchmarks/speed/solvers.py --widths 256 512 1024 2048 3072 4096

Inputs of the solvers: two models of width w whose features are a noisy permutation of each
other (Pearson correlation over 4w samples). Every time is one run, in seconds. The plain loop
runs only where the cube law from its previous width predicts it finishes within
``--plain-budget``; elsewhere it is "skipped" (nothing is extrapolated). The descent runs through
:class:`hf_mudsc.MuDSCMerger` on two randomly initialised BERT parents (``--descent-size``),
statistics collected once, then one solve per mode with the default descent (alpha 0.5,
``max_sweeps`` 4, ``patience`` 1, ``tol`` 1e-3). Results go to ``benchmarks/results/speed_solvers.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS_DIR,
    SHAPES,
    random_batches,
    random_parents,
    recorded_descent,
    timed,
    write_results,
)
from reference_zip import reference_zip

from hf_mudsc import MuDSCMerger
from hf_mudsc.solve import solve_heads, solve_permute, solve_zip

ZIP_SETTINGS = [(0.0, 0.0), (0.2, 0.5)]  # (budget, decay)
HEAD_SHAPES = [(12, 64), (16, 64)]  # (heads, head_dim): BERT-base, BERT-large


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "speed_solvers.json")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024, 2048, 3072, 4096])
    parser.add_argument("--plain-budget", type=float, default=60.0,
                        help="seconds the plain O(n^3) loop may take at one width")
    parser.add_argument("--descent-size", choices=list(SHAPES), default="small")
    parser.add_argument("--descent-samples", type=int, default=32, help="texts of 128 tokens, half padded")
    args = parser.parse_args()
    results: dict[str, Any] = {"zip": [], "permute": [], "heads": bench_heads(),
                               "descent": bench_descent(args.descent_size, args.descent_samples)}
    last_plain: dict[tuple[float, float], tuple[int, float]] = {}
    for width in args.widths:
        sim = planted_similarity(width, np.random.default_rng(width))
        results["permute"].append({"width": width, "seconds": timed(solve_permute, sim, [width, width])[1]})
        for budget, decay in ZIP_SETTINGS:
            results["zip"].append(bench_zip(sim, width, budget, decay, last_plain, args.plain_budget))
        del sim
    print_tables(results)
    print("->", write_results(args.out, results))


def planted_similarity(width: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(width, 4 * width)).astype(np.float32)
    y = x[rng.permutation(width)] + rng.normal(size=x.shape).astype(np.float32)
    return np.corrcoef(np.vstack([x, y])).astype(np.float64)


def bench_zip(sim: np.ndarray, width: int, budget: float, decay: float,
              last_plain: dict[tuple[float, float], tuple[int, float]],
              plain_budget: float) -> dict[str, Any]:
    """Fast zip and, within the time budget, the plain loop on the same input."""
    sol, fast = timed(solve_zip, sim, [width, width], budget=budget, decay=decay)
    row = {"width": width, "units": 2 * width, "budget": budget, "decay": decay,
           "fast_s": fast, "plain_s": "skipped", "plain_over_fast": None, "same": None}
    prev = last_plain.get((budget, decay))
    if prev is None or prev[1] * (width / prev[0]) ** 3 <= plain_budget:
        ref, plain = timed(reference_zip, sim, [width, width], budget=budget, decay=decay)
        same = np.unique(np.concatenate(ref), return_inverse=True)[1].reshape(-1)
        row.update(plain_s=plain, plain_over_fast=round(plain / max(fast, 1e-3), 1),
                   same=bool(np.array_equal(same, sol.labels())))
        last_plain[(budget, decay)] = (width, plain)
    return row


def bench_heads() -> list[dict[str, Any]]:
    """Both modes on the QK and VO spaces of one layer of two models (``heads x head_dim`` units)."""
    rows = []
    for heads, head_dim in HEAD_SHAPES:
        width = heads * head_dim
        rng = np.random.default_rng(width)
        sims = [planted_similarity(width, rng) for _ in range(2)]
        for mode in ("permute", "zip"):
            budget, decay = (0.2, 0.5) if mode == "zip" else (0.0, 0.0)
            rows.append({"heads": heads, "head_dim": head_dim, "spaces": 2, "mode": mode,
                         "seconds": timed(solve_heads, sims, [width, width], heads, head_dim, mode, budget,
                                          decay)[1]})
    return rows


def bench_descent(size: str, samples: int) -> dict[str, Any]:
    """One statistics pass, then a MuDSC solve (alpha 0.5) per mode, with its sweeps timed."""
    merger = MuDSCMerger.from_pretrained(random_parents("bert", size), "mudsc")
    _, stats_s = timed(merger.collect, random_batches("bert", samples, 8, 128), num_samples=samples,
                       progress=False)
    out: dict[str, Any] = {"parents": f"bert-{size}, random init", "samples": samples, "statistics_s": stats_s,
                           "runs": []}
    for mode in ("zip", "permute"):
        with recorded_descent() as record:
            _, solve_s = timed(merger.solve, progress=False, mode=mode)
        (descent,) = record
        out["runs"].append({"mode": mode, "alpha": merger.config.resolved_alpha, "solve_s": solve_s,
                            "weight_sweeps": len(descent["weight_sweeps_s"]), **descent})
    return out


def print_tables(results: dict[str, Any]) -> None:
    print(f"{'zip 2 x w':>10} {'budget':>7} {'decay':>6} {'fast s':>8} {'plain s':>9} {'ratio':>7} same")
    for r in results["zip"]:
        plain = r["plain_s"] if isinstance(r["plain_s"], str) else f"{r['plain_s']:.3f}"
        print(f"{r['width']:>10} {r['budget']:>7} {r['decay']:>6} {r['fast_s']:>8.3f} {plain:>9} "
              f"{r['plain_over_fast'] or '':>7} {'' if r['same'] is None else r['same']}")
    print(f"\n{'LAP 2 x w':>10} {'s':>8}")
    for r in results["permute"]:
        print(f"{r['width']:>10} {r['seconds']:>8.3f}")
    print(f"\n{'heads':>10} {'mode':>8} {'s':>8}")
    for r in results["heads"]:
        print(f"{str(r['heads']) + 'x' + str(r['head_dim']):>10} {r['mode']:>8} {r['seconds']:>8.3f}")
    d = results["descent"]
    print(f"\ndescent, {d['parents']}, statistics of {d['samples']} texts: {d['statistics_s']:.1f} s")
    for r in d["runs"]:
        print(f"  {r['mode']:>7}: solve {r['solve_s']:.1f} s, {r['units']} units, first sweep "
              f"{r['first_sweep_s']:.1f} s, weight sweeps {r['weight_sweeps_s']} s, history {r['history']}")


if __name__ == "__main__":
    main()

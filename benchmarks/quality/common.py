"""The shared runner of the quality benchmarks: every method on one parent pair, then the mean
and spread over pairs, written to a results file with the machine it ran on.

A *pair* is two parents trained on disjoint label sets. Scores follow ZipIt's protocol
(``hf_mudsc.evaluation``): *joint* = softmax per task, argmax over the union of labels;
*per task* = argmax inside the example's own task.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from hf_mudsc import MergeConfig, MuDSCMerger
from hf_mudsc.evaluation import PRESET_RUNS, evaluate_models, format_table

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
MERGE_FIELDS = {f.name for f in dataclasses.fields(MergeConfig)}

# every preset of the engine (the demo's rows too), and the label-free choice among candidates
METHOD_RUNS: list[tuple[str, dict[str, Any]]] = PRESET_RUNS + [
    ("auto (label-free choice)", {"method": "auto", "repair": "none"})]
PARENT_ROWS = ("parent A alone", "parent B alone", "ensemble (2x compute)")
FULL_MERGE = "MuDSC zip (alpha 0.5)"  # the alpha = 0.5, all-layers point of both sweeps
ALPHAS = (0.0, 0.5, 1.0)  # the alpha sweep (0.5 is FULL_MERGE)
# MuDSC zip (alpha 0.5) at other same-model budgets and decays; (0, 0) is one-to-one matching
ZIP_GRID = ((0.0, 0.0), (0.25, 0.0), (0.5, 0.0), (1.0, 0.0), (0.25, 0.5), (1.0, 0.5), (0.5, 1.0))


def alpha_runs(alphas: Iterable[float], mode: str = "zip") -> list[tuple[str, dict[str, Any]]]:
    """MuDSC at each alpha (0 = activations only, 1 = weights only)."""
    return [(f"MuDSC {mode} alpha={a:g}", {"method": "mudsc", "mode": mode, "alpha": float(a), "repair": "none"})
            for a in alphas]


def zip_runs(grid: Iterable[tuple[float, float]] = ZIP_GRID) -> list[tuple[str, dict[str, Any]]]:
    """MuDSC zip (alpha 0.5) at each (same-model budget, decay)."""
    return [(f"MuDSC zip budget={b:g} decay={d:g}",
             {"method": "mudsc", "mode": "zip", "zip_budget": b, "zip_decay": d, "repair": "none"}) for b, d in grid]


# closed-form repairs after alignment (MergeConfig.repair) after MuDSC zip, ZipIt!, averaging and
# auto (MuDSC with all three, the default, is a row of PRESET_RUNS); the sweeps below run unrepaired
REPAIR_RUNS: list[tuple[str, dict[str, Any]]] = [
    ("MuDSC zip + heads", {"method": "mudsc", "repair": "heads"}),
    ("ZipIt! (published) + heads", {"method": "zipit", "repair": "heads"}),
    ("average + heads", {"method": "average", "repair": "heads"}),
    ("auto + heads", {"method": "auto", "repair": "heads"}),
]


def partial_runs(layers: Iterable[int], num_layers: int, repaired: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """MuDSC zip merging the embeddings and the first L layers; later layers stay per task; without
    repairs, or (``repaired``) with the default's."""
    if repaired:
        return [(f"default (zip + repairs), {n} of {num_layers} layers merged", {"method": "mudsc", "merge_layers": n})
                for n in layers]
    return [(f"MuDSC zip, {n} of {num_layers} layers merged",
             {"method": "mudsc", "mode": "zip", "merge_layers": n, "repair": "none"}) for n in layers]


def benchmark_runs(depths: Iterable[int], num_layers: int) -> list[tuple[str, dict[str, Any]]]:
    """Every preset and auto, the :data:`REPAIR_RUNS`, MuDSC zip at the other :data:`ALPHAS` and on
    the :data:`ZIP_GRID`, and partial merges at ``depths`` without and with the default's repairs."""
    return (METHOD_RUNS + REPAIR_RUNS + alpha_runs([a for a in ALPHAS if a != 0.5]) + zip_runs()
            + partial_runs(depths, num_layers) + partial_runs(depths, num_layers, repaired=True))


def score_pair(
    paths: Sequence[str | os.PathLike],
    scoring: Sequence[Any],
    calibration: Any,
    runs: Sequence[tuple[str, dict[str, Any]]],
    *,
    num_samples: int = 256,
    batch_size: int = 32,
    column: str | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Each parent alone, the ensemble, then every run, from one statistics pass (a run with other
    statistics settings, or ``auto``, which holds a slice out, collects its own).

    ``scoring``: batches for :func:`hf_mudsc.evaluation.evaluate_models`; ``calibration``: any
    data that :meth:`MuDSCMerger.collect` takes (unlabeled use only).
    Rows: ``{"model", "joint", "per_task", "by_task", "seconds"}``.
    """
    merger = MuDSCMerger.from_pretrained([str(p) for p in paths], "mudsc")
    models = [p.model for p in merger.parents]
    rows = [
        _row(PARENT_ROWS[0], evaluate_models([models[0], None], scoring)),
        _row(PARENT_ROWS[1], evaluate_models([None, models[1]], scoring)),
        _row(PARENT_ROWS[2], evaluate_models(models, scoring)),
    ]
    tick = time.perf_counter()
    merger.collect(calibration, num_samples=num_samples, batch_size=batch_size, column=column, progress=False)
    log(f"  statistics: {time.perf_counter() - tick:.1f} s")
    for name, overrides in runs:
        tick = time.perf_counter()
        config = merger.config.with_updates(**overrides)
        if config.method == "auto" or config.statistics_changes(merger.config):
            # its own statistics pass: auto holds a slice of the data out; or other statistics settings
            own = MuDSCMerger(list(merger.parents), config)
            result = own.merge(calibration, num_samples=num_samples, batch_size=batch_size, column=column,
                               progress=False)
        else:
            result = merger.merge(progress=False, **overrides)
        seconds = time.perf_counter() - tick
        rows.append(_row(name, evaluate_models(result.task_models, scoring), seconds))
        if result.selection:
            rows[-1]["selection"] = result.selection
            rows[-1]["chosen"] = next(r["candidate"] for r in result.selection if r.get("chosen"))
        log(f"  {name}: joint {_fmt(rows[-1]['joint'])}, per task {_fmt(rows[-1]['per_task'])} ({seconds:.1f} s)"
            + (f", chose {rows[-1]['chosen']}" if result.selection else ""))
    return rows


def score_pairs(
    pairs: Sequence[dict[str, Any]],
    prepare: Callable[[dict[str, Any]], tuple[Sequence[Path], Sequence[Any], Any, list[list[str]]]],
    runs: Sequence[tuple[str, dict[str, Any]]],
    *,
    num_samples: int,
    batch_size: int,
    log: Callable[[str], None] = print,
) -> None:
    """:func:`score_pair` on every pair of :func:`pair_definitions`, in place: ``prepare(pair)``
    gives the parent folders, scoring batches, calibration data and class names; each pair gets
    its ``rows``, ``class_names``, ``parents`` (folder and training recipe) and ``seconds``."""
    for i, pair in enumerate(pairs, 1):
        log(f"pair {i}/{len(pairs)}: classes {pair['classes']}, seeds {pair['seeds']}")
        tick = time.perf_counter()
        paths, scoring, calibration, class_names = prepare(pair)
        log(f"  parents and data ready: {time.perf_counter() - tick:.0f} s")
        pair["rows"] = score_pair(paths, scoring, calibration, runs, num_samples=num_samples,
                                  batch_size=batch_size, log=log)
        pair["class_names"] = class_names
        pair["parents"] = [{"folder": str(p), "recipe": json.loads((Path(p) / "parent_recipe.json").read_text())}
                           for p in paths]
        pair["seconds"] = round(time.perf_counter() - tick, 1)
        log(format_table(pair["rows"], ["model", "joint", "per_task", "by_task", "seconds"]))


def report(name: str, title: str, pairs: Sequence[dict[str, Any]], runs: Sequence[tuple[str, dict[str, Any]]],
           sweep: tuple[Sequence[int], int], info: dict[str, Any], start: float,
           log: Callable[[str], None] = print) -> Path:
    """Summarise scored ``pairs``; write ``quality_<name>.{json,md}`` (``info`` describes data,
    calibration and scoring), the bar plot of the main rows and the sweep plot (``sweep``: the
    partial-merge depths and the number of layers); log the summary table."""
    summary = summarise([p["rows"] for p in pairs])
    oracle = [auto_against_oracle(p["rows"], runs) for p in pairs]
    path = write_results(name, {
        "command": shlex.join(["python", *sys.argv]),
        **info,
        "runs": [{"model": n, **o} for n, o in runs],
        "pairs": list(pairs),
        "summary": summary,
        "auto_against_oracle": oracle,
        "seconds": round(time.perf_counter() - start, 1),
    })
    for i, entry in enumerate(oracle, 1):
        if entry:
            log(f"pair {i}: auto chose {entry['chosen']}: joint {entry['auto_joint']:.3f} / per task "
                f"{entry['auto_per_task']:.3f}; best candidate on the test labels (oracle): joint "
                f"{entry['oracle_joint']:.3f} ({entry['oracle_joint_row']}), per task {entry['oracle_per_task']:.3f} "
                f"({entry['oracle_per_task_row']})")
    main_names = set(PARENT_ROWS) | {n for n, _ in METHOD_RUNS}
    plot_summary([e for e in summary if e["model"] in main_names], RESULTS_DIR / f"quality_{name}.png",
                 f"{title} ({len(pairs)} pairs)")
    plot_sweeps(summary, RESULTS_DIR / f"quality_{name}_sweeps.png", f"{title}: MuDSC zip sweeps", *sweep)
    log("\n" + summary_table(summary))
    log(f"\nwrote {path} and its .md/.png in {time.perf_counter() - start:.0f} s")
    return path


def _recipe_key(overrides: dict[str, Any]) -> tuple:
    """What a run's recipe resolves to (so that two spellings of one merge compare equal)."""
    c = MergeConfig(**overrides)
    return (c.method, c.resolved_mode, c.resolved_alpha, c.resolved_zip_budget, c.resolved_zip_decay,
            c.merge_layers, c.resolved_repair)


def auto_against_oracle(rows: Sequence[dict[str, Any]], runs: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The auto row of one pair beside the best of its candidates by test accuracy (the oracle),
    where the benchmark ran every candidate as a row of its own; ``{}`` without an auto row."""
    auto = next((r for r in rows if r.get("selection")), None)
    if auto is None:
        return {}
    by_key = {_recipe_key(o): n for n, o in runs if o.get("method") != "auto"}
    scored = {r["model"]: r for r in rows}
    shared = {k: v for k, v in dict(runs)[auto["model"]].items() if k != "method"}  # e.g. a repair
    names = [by_key.get(_recipe_key({**shared, **{k: v for k, v in c.items() if k in MERGE_FIELDS}}))
             for c in auto["selection"]]
    cands = [scored[n] for n in names if n in scored]
    best_joint = max(cands, key=lambda r: r["joint"])
    best_task = max(cands, key=lambda r: r["per_task"])
    return {"chosen": auto["chosen"], "auto_joint": auto["joint"], "auto_per_task": auto["per_task"],
            "candidates_scored": len(cands), "oracle_joint": best_joint["joint"], "oracle_joint_row": best_joint["model"],
            "oracle_per_task": best_task["per_task"], "oracle_per_task_row": best_task["model"]}


def summarise(pairs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean, sample std, min and max of joint and per-task accuracy per model, over pairs."""
    out = []
    for name in dict.fromkeys(r["model"] for rows in pairs for r in rows):
        entry: dict[str, Any] = {"model": name}
        for metric in ("joint", "per_task"):
            values = [r[metric] for rows in pairs for r in rows if r["model"] == name and r[metric] is not None]
            entry[metric] = statistics.fmean(values) if values else None
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            entry[f"{metric}_min"] = min(values) if values else None
            entry[f"{metric}_max"] = max(values) if values else None
        entry["pairs"] = sum(1 for rows in pairs if any(r["model"] == name for r in rows))
        out.append(entry)
    return out


def summary_table(summary: Sequence[dict[str, Any]]) -> str:
    """A markdown table: mean +- std (min-max) of joint and per-task accuracy."""
    def cell(e: dict[str, Any], metric: str) -> str:
        if e[metric] is None:
            return "-"
        return f"{e[metric]:.3f} ± {e[metric + '_std']:.3f} ({e[metric + '_min']:.2f}-{e[metric + '_max']:.2f})"
    rows = [{"model": e["model"], "joint": cell(e, "joint"), "per task": cell(e, "per_task"), "pairs": e["pairs"]}
            for e in summary]
    return format_table(rows, ["model", "joint", "per task", "pairs"])


def machine() -> dict[str, Any]:
    """What the run ran on."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """``benchmarks/results/quality_<name>.json`` (with the machine) and a markdown table beside it."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"quality_{name}.json"
    payload = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), **payload}
    path.write_text(json.dumps(payload, indent=2))
    if "summary" in payload:
        path.with_suffix(".md").write_text(summary_table(payload["summary"]) + "\n")
    return path


def plot_summary(summary: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Horizontal bars of mean joint and per-task accuracy, with min-max whiskers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["model"] for e in summary]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
    ys = range(len(names))
    for offset, metric, colour in ((-0.2, "per_task", "tab:blue"), (0.2, "joint", "tab:orange")):
        means = [e[metric] or 0.0 for e in summary]
        lo = [(e[metric] or 0.0) - (e[f"{metric}_min"] or 0.0) for e in summary]
        hi = [(e[f"{metric}_max"] or 0.0) - (e[metric] or 0.0) for e in summary]
        ax.barh([y + offset for y in ys], means, height=0.4, xerr=[lo, hi], color=colour,
                label=metric.replace("_", " "), capsize=2)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (mean over pairs; whiskers: min-max)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pair_definitions(count: int, num_classes: int = 10) -> list[dict[str, Any]]:
    """``count`` pairs of disjoint halves of the classes, each with its own seed pair: first
    half | second half (seeds 0, 1), even | odd (seeds 2, 3), then seeded random splits."""
    half = num_classes // 2
    pairs = [{"classes": [list(range(half)), list(range(half, num_classes))], "seeds": [0, 1]},
             {"classes": [list(range(0, num_classes, 2)), list(range(1, num_classes, 2))], "seeds": [2, 3]}]
    split_seed = 0
    while len(pairs) < count:
        perm = np.random.default_rng(split_seed).permutation(num_classes)
        classes = [sorted(int(c) for c in perm[:half]), sorted(int(c) for c in perm[half:])]
        if all(sorted(classes) != sorted(p["classes"]) for p in pairs):
            pairs.append({"classes": classes, "seeds": [2 * len(pairs), 2 * len(pairs) + 1], "split_seed": split_seed})
        split_seed += 1
    return pairs[:count]


def calibration_rows(train: Any, classes: Sequence[int], num_samples: int, seed: int) -> Any:
    """``num_samples`` rows of a labelled ``datasets.Dataset`` drawn (seeded) from the given
    classes, without their labels."""
    pool = np.flatnonzero(np.isin(np.asarray(train["label"]), classes))
    picks = np.random.default_rng(seed).choice(pool, size=num_samples, replace=False)
    return train.select(np.sort(picks)).remove_columns("label")


def plot_sweeps(summary: Sequence[dict[str, Any]], path: Path, title: str, depths: Sequence[int],
                num_layers: int) -> Path:
    """Joint and per-task accuracy against alpha (:data:`ALPHAS`) and against merged layers
    (:func:`partial_runs` at ``depths``), mean with a min-max band; :data:`FULL_MERGE` is the
    alpha 0.5, all-layers point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {e["model"]: e for e in summary}
    alpha_names = {o["alpha"]: n for n, o in alpha_runs(ALPHAS)} | {0.5: FULL_MERGE}
    layer_names = {o["merge_layers"]: n for n, o in partial_runs(depths, num_layers)} | {num_layers: FULL_MERGE}
    sweeps = (("alpha (0 = activations only, 1 = weights only)", sorted(alpha_names.items())),
              (f"merged layers (of {num_layers}; MuDSC zip, alpha 0.5)", sorted(layer_names.items())))
    ensemble = by_name[PARENT_ROWS[2]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (label, points) in zip(axes, sweeps):
        xs = [x for x, _ in points]
        entries = [by_name[n] for _, n in points]
        for metric, colour in (("per_task", "tab:blue"), ("joint", "tab:orange")):
            ax.plot(xs, [e[metric] for e in entries], "o-", color=colour, label=metric.replace("_", " "))
            ax.fill_between(xs, [e[f"{metric}_min"] for e in entries], [e[f"{metric}_max"] for e in entries],
                            color=colour, alpha=0.2)
            ax.axhline(ensemble[metric], color=colour, ls="--", lw=1, label=f"ensemble, {metric.replace('_', ' ')}")
        ax.set_xlabel(label)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy (mean over {ensemble['pairs']} pairs; band: min-max)")
    axes[0].set_ylim(0, 1)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _row(name: str, scores: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
    return {"model": name, "joint": scores["joint"], "per_task": scores["per_task"],
            "by_task": scores["per_task_by_task"], "seconds": None if seconds is None else round(seconds, 2)}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

"""``hf-mudsc demo``: two small ViTs trained from different seeds on digits 0-4 and 5-9
(scikit-learn's bundled digits; trained once, then cached), merged with every preset from one
statistics pass, scored under ZipIt's protocol, and the default merge (MuDSC zip with its repairs)
written with its card."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from .. import __version__
from ..evaluation import DEFAULT_RUN, PRESET_RUNS, evaluate_models, format_table, image_batches
from ..io.writer import check_output_dir
from ..merger import MuDSCMerger
from .parents import digit_parents, load_digits_dataset

SAVED = DEFAULT_RUN  # the merge written with its card: the product's default
RUNS: list[tuple[str, dict[str, Any]]] = PRESET_RUNS + [
    ("MuDSC zip, 2 of 4 layers merged", {"method": "mudsc", "mode": "zip", "merge_layers": 2, "repair": "none"}),
]
COLUMNS = ["model", "joint", "per_task", "task 0-4", "task 5-9", "seconds"]


def run_demo(out: str | Path = "mudsc-demo", cache_dir: str | Path | None = None, num_samples: int = 256,
             echo: Callable[[str], None] = print, overwrite: bool = False) -> list[dict[str, Any]]:
    """Run the demo; return the table rows. ``out`` is written over when it holds an earlier demo's
    merge (of these parents), or with ``overwrite``; any other non-empty folder is refused at once."""
    start = time.perf_counter()
    echo("training or loading the two digit parents (cached after the first run) ...")
    paths, tests = digit_parents(cache_dir)
    target = Path(out)
    overwrite = overwrite or _earlier_demo(target, paths)
    check_output_dir(target, overwrite=overwrite)
    merger = MuDSCMerger.from_pretrained([str(p) for p in paths], "mudsc")
    scoring = image_batches(tests, merger.parents[0].processor)
    calibration = load_digits_dataset()["train"].shuffle(seed=0).select(range(num_samples))

    rows = [_row("parent A alone (digits 0-4)", evaluate_models([merger.parents[0].model, None], scoring)),
            _row("parent B alone (digits 5-9)", evaluate_models([None, merger.parents[1].model], scoring)),
            _row("ensemble (both parents, 2x compute)",
                 evaluate_models([p.model for p in merger.parents], scoring))]
    echo(f"collecting activation statistics on {num_samples} unlabeled training images ...")
    merger.collect(calibration, num_samples=num_samples, batch_size=64, progress=False)
    results = {}
    for name, overrides in RUNS:
        tick = time.perf_counter()
        result = merger.merge(progress=False, **overrides)
        results[name] = result
        rows.append(_row(name, evaluate_models(result.task_models, scoring), time.perf_counter() - tick))
    echo("")
    echo(format_table(rows, COLUMNS))
    echo(f"({_versions()})")

    results[SAVED].save_pretrained(target, overwrite=overwrite, evaluation=_card_rows(rows))
    echo(f"\nwrote the MuDSC merge to {target}/ (model card: {target}/README.md) "
         f"in {time.perf_counter() - start:.0f} s")
    return rows


def _earlier_demo(target: Path, paths: list[Path]) -> bool:
    """Whether ``target`` holds a merge of these parents (an earlier run's output; a merge of other
    parents, say a user's own, is not the demo's to replace)."""
    try:
        parents = json.loads((target / "merge_recipe.json").read_text()).get("parents")
    except (OSError, ValueError, AttributeError):
        return False
    return parents == [str(Path(p).resolve()) for p in paths]


def _versions() -> str:
    """What the table depends on: a rerun on the same CPU gives it exactly; another CPU may compute
    the training's float sums differently and so train slightly different parents."""
    return (f"hf_mudsc {__version__}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
            f"transformers {transformers.__version__}")


def _row(name: str, scores: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
    by_task = scores["per_task_by_task"]
    return {"model": name, "joint": scores["joint"], "per_task": scores["per_task"],
            "task 0-4": by_task[0], "task 5-9": by_task[1], "seconds": None if seconds is None else round(seconds, 2)}


def _card_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "seconds"} for r in rows]

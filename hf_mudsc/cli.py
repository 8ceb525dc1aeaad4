"""The ``hf-mudsc`` command: parses arguments and calls the merger, nothing else.

    hf-mudsc merge MODEL MODEL [...] --dataset DATA --out DIR [options]
    hf-mudsc merge --config recipe.yaml
    hf-mudsc apply MERGED_DIR --out DIR        (re-apply a saved merge, no data)
    hf-mudsc push DIR REPO                     (upload a merged folder in one commit)
    hf-mudsc demo                              (two small ViTs on digits, every preset)

Errors are one line on stderr and a non-zero exit (2 for bad input, 130 when interrupted);
set ``HF_MUDSC_DEBUG=1`` to see the traceback. Warnings that a merge may be poor (too little
calibration data, constant activations) are one line each: ``hf-mudsc: warning: ...``.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

# Recipe fields: (type, help). The same names serve the command line and YAML recipes.
MERGE_FIELDS: dict[str, tuple[Any, str]] = {
    "method": (str, "mudsc | zipit | weight-matching | activation-matching | average (default mudsc)"),
    "mode": (str, "zip | permute (default: the method's)"),
    "alpha": (float, "weight-space share of the similarity, in [0, 1]"),
    "merge_layers": (int, "merge the embeddings and the first L layers; later layers stay per task"),
    "zip_budget": (float, "share of a model's units that may merge with units of the same model"),
    "zip_decay": (float, "similarity decay of merged units, in [0, 1]"),
    "max_sweeps": (int, "coordinate-descent sweeps at most"),
    "patience": (int, "sweeps without gain before stopping"),
    "max_tokens_per_batch": (int, "cap on tokens per batch per activation site"),
    "seed": (int, "random seed"),
    "unpaired_layers": (str, "parents of different depths: keep | average a deep layer without a partner"),
}
DATA_FIELDS: dict[str, tuple[Any, str]] = {
    "dataset": (str, "calibration data: Hub id, local file/folder for datasets.load_dataset, or a save_to_disk folder"),
    "split": (str, "dataset split (default: train, else the first)"),
    "column": (str, "text or image column, or two text columns 'a,b' (default: found by name)"),
    "num_samples": (int, "calibration examples (default 256)"),
    "batch_size": (int, "batch size (default 16)"),
}
LOAD_FIELDS: dict[str, tuple[Any, str]] = {
    "device_map": (str, "Accelerate device map for the parents, e.g. auto"),
    "torch_dtype": (str, "dtype to load the parents in, e.g. float32"),
    "revision": (str, "Hub revision of the parents"),
}
OUTPUT_FIELDS: dict[str, tuple[Any, str]] = {
    "out": (str, "output folder"),
    "push_to_hub": (str, "also upload the folder to this Hub repo"),
    "max_shard_size": (str, "largest safetensors shard (default 5GB)"),
}
FLAGS = {
    "overwrite": "replace a non-empty output folder",
    "allow_pickle": "allow parents stored as pickle checkpoints (unsafe for untrusted files)",
    "trust_remote_code": "allow parents that need custom code",
    "private": "create the Hub repo as private",
}
RECIPE_KEYS = {"models", *MERGE_FIELDS, *DATA_FIELDS, *LOAD_FIELDS, *OUTPUT_FIELDS, *FLAGS}


class CLIError(ValueError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error (``--help`` still prints the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"hf-mudsc: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hf-mudsc", description="Merge models trained from different "
                     "initialisations, without training (MuDSC, ZipIt!, Git Re-Basin).")
    sub = parser.add_subparsers(dest="command", required=True)

    merge = sub.add_parser("merge", help="merge two or more models")
    merge.add_argument("models", nargs="*", help="Hub ids or local folders of the parents")
    merge.add_argument("--config", help="YAML recipe with the same fields (command-line values win)")
    for fields in (MERGE_FIELDS, DATA_FIELDS, LOAD_FIELDS, OUTPUT_FIELDS):
        for name, (kind, text) in fields.items():
            merge.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text)
    for name, text in FLAGS.items():
        merge.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", default=None, help=text)
    merge.add_argument("--token", help="Hub token (else the cached login / HF_TOKEN)")

    apply = sub.add_parser("apply", help="re-apply a saved merge (recipe + transforms) to its parents")
    apply.add_argument("merged", help="a folder written by 'hf-mudsc merge'")
    apply.add_argument("--out", required=True, help="output folder")
    apply.add_argument("--overwrite", action="store_true", help=FLAGS["overwrite"])
    apply.add_argument("--token", help="Hub token")

    push = sub.add_parser("push", help="upload a merged folder to the Hub in one commit")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true", help=FLAGS["private"])
    push.add_argument("--token", help="Hub token")

    demo = sub.add_parser("demo", help="merge two small ViTs trained on digits with every preset")
    demo.add_argument("--out", default="mudsc-demo", help="where to write the merged folder (default mudsc-demo)")
    demo.add_argument("--cache-dir", help="where the trained parents are cached")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error (2, its one line already printed)
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 2
    try:
        with _progress_bars(_interactive()), _one_line_warnings():
            return {"merge": _merge, "apply": _apply, "push": _push, "demo": _demo}[args.command](args)
    except KeyboardInterrupt as stop:  # Ctrl-C: output folders are all or nothing (see io.writer)
        told = stop.args[0] if stop.args and isinstance(stop.args[0], str) else None
        default = ("the upload may not have finished (it is one commit: all or nothing)" if args.command == "push"
                   else "nothing was written")
        print(f"hf-mudsc: interrupted; {told or default}", file=sys.stderr)
        return 130
    except Exception as err:  # one line, no traceback: a user error or a clear failure
        if os.environ.get("HF_MUDSC_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"hf-mudsc: error: {message}", file=sys.stderr)
        return 2


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings about the quality of a merge as one line each (``hf-mudsc: warning: ...``), every
    time they occur; other warnings as Python shows them. The previous state is restored."""
    import warnings

    from .statistics import MergeQualityWarning

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, MergeQualityWarning):
                print(f"hf-mudsc: warning: {' '.join(str(message).split())}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", MergeQualityWarning)
        yield


def _interactive() -> bool:
    """Progress bars only on a terminal: in logs and pipes they are noise around the one-line errors."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn the progress bars of transformers, huggingface_hub and datasets off (unless ``enabled``),
    and restore their previous state afterwards (``main`` may run inside a Python process)."""
    if enabled:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as tf_logging

    before = (tf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled(),
              datasets.is_progress_bar_enabled())
    tf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if before[0]:
            tf_logging.enable_progress_bar()
        (hub_utils.disable_progress_bars if before[1] else hub_utils.enable_progress_bars)()
        if before[2]:
            datasets.enable_progress_bars()


def _check_types(path: str, data: dict[str, Any]) -> None:
    """Recipe values must have the type of their command-line option."""
    for fields in (MERGE_FIELDS, DATA_FIELDS, LOAD_FIELDS, OUTPUT_FIELDS):
        for name, (kind, _) in fields.items():
            value = data.get(name)
            ok = (value is None or (kind is str and isinstance(value, str))
                  or (name == "max_shard_size" and isinstance(value, int) and not isinstance(value, bool))
                  or (kind is int and isinstance(value, int) and not isinstance(value, bool))
                  or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool)))
            if not ok:
                raise CLIError(f"recipe '{path}': field '{name}' must be {kind.__name__}, got {value!r}")
    for name in FLAGS:
        if name in data and not isinstance(data[name], bool):
            raise CLIError(f"recipe '{path}': field '{name}' must be true or false, got {data[name]!r}")
    models = data.get("models")
    if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        raise CLIError(f"recipe '{path}': 'models' must be a list of Hub ids or folders, got {models!r}")


def load_recipe(path: str) -> dict[str, Any]:
    """Read a YAML recipe; refuse unknown keys."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise CLIError(f"cannot read recipe '{path}': {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise CLIError(f"recipe '{path}' is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise CLIError(f"recipe '{path}' must be a mapping of fields")
    unknown = sorted(set(data) - RECIPE_KEYS - {"token"})
    if unknown:
        raise CLIError(f"recipe '{path}' has unknown fields: {', '.join(unknown)} (known: {', '.join(sorted(RECIPE_KEYS))})")
    if "token" in data:
        raise CLIError(f"recipe '{path}' holds a token: keep secrets out of recipes (use --token or HF_TOKEN)")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    _check_types(path, data)
    return data


def shard_size_of(value: Any) -> int | str:
    """``max_shard_size`` as huggingface_hub takes it: a byte count (int) or a size such as 500MB.
    Checked before any work (a bad value would otherwise fail only when the folder is written)."""
    import re

    text = str(value).strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    if not re.fullmatch(r"(?i)\d+(\.\d+)?\s*[KMGT]B", text) or float(re.match(r"[\d.]+", text)[0]) <= 0:
        raise CLIError(f"max_shard_size must be a byte count or a size such as 500MB or 2GB, got '{value}'")
    return text


def _merge(args: argparse.Namespace) -> int:
    from . import MuDSCMerger
    from .io.writer import check_output_dir

    recipe = load_recipe(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if v not in (None, []) and k not in ("command", "config", "token")}
    recipe.update(given)
    models = recipe.get("models") or []
    if len(models) < 2:
        raise CLIError("give at least two models to merge (positional MODEL arguments or 'models:' in the recipe)")
    if not recipe.get("out"):
        raise CLIError("give an output folder with --out")
    shard_size = shard_size_of(recipe.get("max_shard_size", "5GB"))
    merge_config = {k: recipe[k] for k in MERGE_FIELDS if k in recipe}
    load = {k: recipe[k] for k in LOAD_FIELDS if k in recipe}
    check_output_dir(recipe["out"], overwrite=bool(recipe.get("overwrite")), protected=models)
    merger = MuDSCMerger.from_pretrained(models, token=args.token, allow_pickle=bool(recipe.get("allow_pickle")),
                                         trust_remote_code=bool(recipe.get("trust_remote_code")), **load,
                                         **merge_config)
    data = None
    if merger.config.needs_data:
        if not recipe.get("dataset"):
            raise CLIError(f"method '{merger.config.method}' needs calibration data: give --dataset "
                           "(or use --method weight-matching)")
        data = load_calibration_dataset(recipe["dataset"], recipe.get("split"), token=args.token)
    accelerator = _launched_accelerator()
    result = merger.merge(data, num_samples=int(recipe.get("num_samples", 256)),
                          batch_size=int(recipe.get("batch_size", 16)), column=recipe.get("column"),
                          progress=_interactive(), accelerator=accelerator)
    if accelerator is not None:  # every rank streamed its shard; only the main one writes and pushes
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return 0
    out = result.save_pretrained(recipe["out"], overwrite=bool(recipe.get("overwrite")),
                                 max_shard_size=shard_size)
    print(f"merged {len(models)} models with {merger.config.method} into {out}")
    if recipe.get("push_to_hub"):
        from .io.hub import push_folder

        try:
            url = push_folder(out, recipe["push_to_hub"], token=args.token, private=recipe.get("private"))
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"the merge was written to {out}, the upload to {recipe['push_to_hub']} may "
                                    "not have finished (it is one commit: all or nothing)") from None
        except Exception as err:
            raise CLIError(f"the merge was written to {out}, but the upload to {recipe['push_to_hub']} failed: "
                           f"{err}") from err
        print(f"pushed to {url}")
    return 0


def _launched_accelerator():
    """An ``Accelerator`` when run by ``accelerate launch`` with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator()


def _apply(args: argparse.Namespace) -> int:
    from .merger import reapply

    result = reapply(args.merged, token=args.token)
    out = result.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"re-applied the merge of {Path(args.merged)} into {out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .io.hub import push_folder

    print(f"pushed to {push_folder(args.folder, args.repo_id, token=args.token, private=args.private or None)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, cache_dir=args.cache_dir)
    return 0


def load_calibration_dataset(source: str, split: str | None = None, token: str | None = None):
    """A Hub id, anything ``datasets.load_dataset`` reads from a local path, or a folder
    written by ``Dataset.save_to_disk``; a dataset dict gives ``split`` (default train)."""
    import datasets

    from .io.hub import could_be_hub_id

    path = Path(source)
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            data = datasets.load_from_disk(str(path))
        elif path.is_file():
            kind = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}.get(
                path.suffix.lower())
            if kind is None:
                raise CLIError(f"cannot read dataset file '{source}': use .csv, .json, .jsonl, .parquet or .txt")
            data = datasets.load_dataset(kind, data_files=str(path))
        elif path.is_dir() or could_be_hub_id(source):
            data = datasets.load_dataset(source, token=token)
        else:
            raise CLIError(f"dataset '{source}' not found")
    except CLIError:
        raise
    except Exception as err:  # datasets raises many kinds; keep one line
        if _holds_no_rows(path):  # datasets fails on empty files and empty save_to_disk folders
            raise CLIError(f"the calibration dataset '{source}' is empty") from None
        raise CLIError(f"cannot load dataset '{source}': {' '.join(str(err).split())[:300]}") from None
    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        name = split or ("train" if "train" in data else next(iter(data)))
        if name not in data:
            raise CLIError(f"dataset '{source}' has no split '{name}' (splits: {', '.join(data)})")
        data = data[name]
    elif split is not None and split != str(getattr(data, "split", None) or "train"):
        # a single table (save_to_disk of one Dataset) is its own split, 'train' as for a data file;
        # another split name would otherwise be ignored
        raise CLIError(f"dataset '{source}' is a single table (split '{getattr(data, 'split', None) or 'train'}'), "
                       f"it has no split '{split}'; drop --split")
    return data


def _holds_no_rows(path: Path) -> bool:
    """A local file with no line beyond a header, or a save_to_disk folder without data files."""
    import json

    try:
        if path.is_file():
            with open(path, "rb") as f:
                lines = [line for _, line in zip(range(3), f) if line.strip()]
            return len(lines) <= (1 if path.suffix.lower() == ".csv" else 0)
        state = path / "state.json"
        return state.is_file() and json.loads(state.read_text()).get("_data_files") == []
    except (OSError, ValueError):
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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
import dataclasses
import os
import re
import sys
import types
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .config import MergeConfig

# Recipe fields other than MergeConfig's: (type, help). The same names serve the command line and
# YAML recipes; MergeConfig's fields are derived from the dataclass (see config_options).
# dataset file suffix -> the datasets builder that reads it
DATASET_FILES = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
DATA_FIELDS: dict[str, tuple[Any, str]] = {
    "dataset": (str, "calibration data: Hub id, local file/folder for datasets.load_dataset, or a save_to_disk folder"),
    "split": (str, "dataset split (default: train, else the first)"),
    "column": (str, "text or image column, or two text columns 'a,b' (default: found by name)"),
    "num_samples": (int, "calibration examples (default 256, or every row of a smaller dataset)"),
    "batch_size": (int, "batch size (default 16; texts go in batches of similar lengths, about this many "
                        "times the mean length in tokens)"),
}
LOAD_FIELDS: dict[str, tuple[Any, str]] = {
    "device_map": (str, "Accelerate device map for the parents, e.g. auto"),
    "torch_dtype": (str, "dtype to load the parents in, e.g. float32"),
    "revision": (str, "Hub revision of the parents"),
    "model_class": (str, "transformers class to load the parents as (default: the one their config names), "
                         "e.g. BertModel to merge classifiers' encoders"),
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


class CLIError(ValueError):
    """Bad command-line input."""


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """A :class:`MergeConfig` field as a command-line option and a YAML recipe field."""

    name: str
    kind: Any  # the field's type hint
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def from_text(self, text: str) -> Any:
        """The command-line value (argparse ``type``): a comma list for tuples; strings pass through
        to MergeConfig's own validation where the field takes one (a Literal, ``"auto"``)."""
        try:
            return _convert(self.kind, text, text=True)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_describe(self.kind)}, got {text!r}") from None

    def from_yaml(self, path: str, value: Any) -> Any:
        try:
            return _convert(self.kind, value, text=False)
        except ValueError:
            raise CLIError(f"recipe '{path}': field '{self.name}' must be {_describe(self.kind)}, got {value!r}") from None


def config_options(config_class: type = MergeConfig) -> dict[str, ConfigOption]:
    """One option per field of the config dataclass: the type from its annotation, the help from
    the ``Args:`` section of its docstring. A new field needs no edit here."""
    hints = typing.get_type_hints(config_class)
    docs = _field_docs(config_class.__doc__ or "")
    return {f.name: ConfigOption(f.name, hints[f.name], docs.get(f.name, ""))
            for f in dataclasses.fields(config_class) if f.init}


def recipe_keys() -> set[str]:
    """Every field a YAML recipe may hold."""
    return {"models", *config_options(MergeConfig), *DATA_FIELDS, *LOAD_FIELDS, *OUTPUT_FIELDS, *FLAGS}


def _field_docs(doc: str) -> dict[str, str]:
    """``name: text`` entries (or ``a, b: text``) of a Google-style ``Args:`` section, with their
    deeper-indented continuation lines; double backquotes dropped."""
    docs: dict[str, str] = {}
    names: list[str] = []
    indent = None
    lines = iter(doc.splitlines())
    for line in lines:
        if line.strip() == "Args:":
            break
    for line in lines:
        if not line.strip():
            continue
        level = len(line) - len(line.lstrip())
        indent = level if indent is None else indent
        if level < indent:
            break
        entry = re.match(r"\s*([\w, ]+):\s+(.*)", line) if level == indent else None
        if entry:
            names = [n.strip() for n in entry[1].split(",")]
            docs.update({n: entry[2] for n in names})
        else:
            docs.update({n: f"{docs[n]} {line.strip()}" for n in names})
    return {n: text.replace("``", "") for n, text in docs.items()}


def _convert(kind: Any, value: Any, *, text: bool) -> Any:
    """``value`` (command-line text when ``text``, else a YAML value) as the type hint ``kind``;
    ``ValueError`` when it does not fit."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and not text and type(None) in args:
            return None
        numeric = all(a in (int, float) for a in args if a is not type(None))
        if text and numeric and type(None) in args and value.strip().lower() == "none":
            return None  # a number or None: `--max-tokens-per-batch none`
        for option in sorted((a for a in args if a is not type(None)), key=_takes_text):  # numbers first
            try:
                return _convert(option, value, text=text)
            except ValueError:
                continue
        raise ValueError(value)
    if origin is typing.Literal or kind is str:  # the config validates the choice
        if isinstance(value, str):
            return value
    elif origin is tuple:  # "a,b" on the command line or in YAML, a YAML list, or one YAML value
        split = isinstance(value, str)
        items = [v.strip() for v in value.split(",") if v.strip()] if split else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        return tuple(_convert(args[0], v, text=text or split) for v in items)
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind in (int, float) and not isinstance(value, bool):
        if text or isinstance(value, (int, float) if kind is float else int):
            return kind(value)  # int('x') / float('x') raise ValueError
    raise ValueError(value)


def _takes_text(kind: Any) -> bool:
    return kind is str or typing.get_origin(kind) is typing.Literal


def _describe(kind: Any) -> str:
    """What a type hint takes, in words."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a comma-separated list of {_describe(args[0]).split(' ', 1)[-1]}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error (``--help`` still prints the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"hf-mudsc: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hf-mudsc", description="Merge models trained from different "
                     "initialisations, without training (MuDSC, ZipIt!, Git Re-Basin).")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hf-mudsc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    merge = sub.add_parser("merge", help="merge two or more models")
    merge.add_argument("models", nargs="*", help="Hub ids or local folders of the parents")
    merge.add_argument("--config", help="YAML recipe with the same fields (command-line values win)")
    for option in config_options(MergeConfig).values():
        if option.kind is bool or typing.get_args(option.kind) == (bool, type(None)):
            merge.add_argument(option.flag, dest=option.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=option.help.replace("%", "%%"))
        else:
            hint = " Comma-separated." if typing.get_origin(option.kind) is tuple or any(
                typing.get_origin(a) is tuple for a in typing.get_args(option.kind)) else ""
            merge.add_argument(option.flag, dest=option.name, type=option.from_text, default=argparse.SUPPRESS,
                               help=option.help.replace("%", "%%") + hint)
    for fields in (DATA_FIELDS, LOAD_FIELDS, OUTPUT_FIELDS):
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
    for name in ("allow_pickle", "trust_remote_code"):
        apply.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", help=FLAGS[name])
    apply.add_argument("--device-map", help=LOAD_FIELDS["device_map"][1])
    apply.add_argument("--max-shard-size", default="5GB", help=OUTPUT_FIELDS["max_shard_size"][1])

    push = sub.add_parser("push", help="upload a merged folder to the Hub in one commit")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true", help=FLAGS["private"])
    push.add_argument("--token", help="Hub token")

    demo = sub.add_parser("demo", help="merge two small ViTs trained on digits with every preset")
    demo.add_argument("--out", default="mudsc-demo", help="where to write the merged folder (default mudsc-demo)")
    demo.add_argument("--cache-dir", help="where the trained parents are cached")
    demo.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder (an earlier "
                                                                "demo's is replaced without it)")
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
    except (ValueError, OSError) as err:  # one line, no traceback: bad input or a clear failure (files, network)
        if os.environ.get("HF_MUDSC_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"hf-mudsc: error: {message}", file=sys.stderr)
        return 2
    except _out_of_memory() as err:  # anything else (a bug) keeps its traceback
        if os.environ.get("HF_MUDSC_DEBUG"):
            raise
        print(f"hf-mudsc: error: out of memory ({' '.join(str(err).split())[:200]}); lower --batch-size or "
              "--num-samples, set --max-tokens-per-batch, or spread the parents with --device-map", file=sys.stderr)
        return 1


def _out_of_memory() -> tuple[type[BaseException], ...]:
    """The errors that mean the machine ran out of memory (CPU or accelerator)."""
    import torch

    return (MemoryError, torch.OutOfMemoryError)


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
    """Recipe values must have the type of their command-line option; MergeConfig's are converted
    as their field's type hint says (a list for a tuple field)."""
    for name, option in config_options(MergeConfig).items():
        if name in data:
            data[name] = option.from_yaml(path, data[name])
    for fields in (DATA_FIELDS, LOAD_FIELDS, OUTPUT_FIELDS):
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
    # merge-layers as the command line spells it
    data = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in data.items()}
    known = recipe_keys()
    unknown = sorted(set(data) - known - {"token"}, key=str)
    if unknown:
        raise CLIError(f"recipe '{path}' has unknown fields: {', '.join(map(str, unknown))} "
                       f"(known: {', '.join(sorted(known))})")
    if "token" in data:
        raise CLIError(f"recipe '{path}' holds a token: keep secrets out of recipes (use --token or HF_TOKEN)")
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
    # a merge setting is in args only when given (it may be given as none); other fields when not None
    settings = config_options(MergeConfig)
    given = {k: v for k, v in vars(args).items()
             if (k in settings or v not in (None, [])) and k not in ("command", "config", "token")}
    recipe.update(given)
    models = recipe.get("models") or []
    if len(models) < 2:
        raise CLIError("give at least two models to merge (positional MODEL arguments or 'models:' in the recipe)")
    if not recipe.get("out"):
        raise CLIError("give an output folder with --out")
    shard_size = shard_size_of(recipe.get("max_shard_size", "5GB"))
    merge_config = {k: recipe[k] for k in config_options(MergeConfig) if k in recipe}
    load = {k: recipe[k] for k in LOAD_FIELDS if k in recipe}
    check_output_dir(recipe["out"], overwrite=bool(recipe.get("overwrite")), protected=models)
    merger = MuDSCMerger.from_pretrained(models, token=args.token, allow_pickle=bool(recipe.get("allow_pickle")),
                                         trust_remote_code=bool(recipe.get("trust_remote_code")), **load,
                                         **merge_config)
    data = None
    if merger.config.uses_data or merger.differ_in_depth:  # layers of different depths are aligned on data
        if not recipe.get("dataset"):
            needs = f"repair {', '.join(merger.config.resolved_repair)}" if merger.config.resolved_repair else \
                f"method '{merger.config.method}'" if merger.config.needs_data else \
                "aligning the layers of parents of different depths"
            raise CLIError(f"{needs} needs calibration data: give --dataset (or use --method weight-matching "
                           "without --repair, for parents of one depth)")
        data = load_calibration_dataset(recipe["dataset"], recipe.get("split"), token=args.token)
    accelerator = _launched_accelerator()
    samples = recipe.get("num_samples")  # read from the data only: a merge without data ignores it
    result = merger.merge(data, num_samples=None if samples is None or data is None else int(samples),
                          batch_size=int(recipe.get("batch_size", 16)), column=recipe.get("column"),
                          progress=_interactive(), accelerator=accelerator)
    if accelerator is not None:  # every rank streamed its shard; only the main one writes and pushes
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return 0
    out = result.save_pretrained(recipe["out"], overwrite=bool(recipe.get("overwrite")),
                                 max_shard_size=shard_size)
    chosen = next((row for row in result.selection or () if row.get("chosen")), None)
    how = merger.config.method if chosen is None else f"auto (chose {chosen['candidate']} of " \
        f"{len(result.selection)} candidates; the card's table scores them)"
    print(f"merged {len(models)} models with {how} into {out}")
    if recipe.get("push_to_hub"):
        from .io.hub import push_folder

        try:
            url = push_folder(out, recipe["push_to_hub"], token=args.token, private=recipe.get("private"))
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"the merge was written to {out}, the upload to {recipe['push_to_hub']} may "
                                    "not have finished (it is one commit: all or nothing)") from None
        except (OSError, ValueError) as err:
            raise CLIError(f"the merge was written to {out}, but the upload to {recipe['push_to_hub']} failed: "
                           f"{err}") from err
        except Exception as err:  # unexpected: its traceback, and where the merge is
            err.add_note(f"hf-mudsc: the merge was written to {out}; upload it with 'hf-mudsc push'")
            raise
        print(f"pushed to {url}")
    return 0


def _launched_accelerator():
    """An ``Accelerator`` when run by ``accelerate launch`` (or ``torchrun``) with several processes,
    else None. Processes that accelerate does not join (on CPUs without ``ACCELERATE_USE_CPU``, it runs
    each alone, and every one would write the folder) are refused."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        return None
    from accelerate import Accelerator

    accelerator = Accelerator()
    if accelerator.num_processes != launched:
        raise CLIError(f"launched as {launched} processes, but accelerate runs {accelerator.num_processes} "
                       f"({accelerator.distributed_type}): on CPUs set ACCELERATE_USE_CPU=true")
    return accelerator


def _apply(args: argparse.Namespace) -> int:
    from .io.writer import check_output_dir
    from .merger import reapply

    shard_size = shard_size_of(args.max_shard_size)
    check_output_dir(args.out, overwrite=args.overwrite)
    result = reapply(args.merged, token=args.token, allow_pickle=args.allow_pickle,
                     trust_remote_code=args.trust_remote_code, device_map=args.device_map)
    out = result.save_pretrained(args.out, overwrite=args.overwrite, max_shard_size=shard_size)
    print(f"re-applied the merge of {Path(args.merged)} into {out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .io.hub import push_folder

    print(f"pushed to {push_folder(args.folder, args.repo_id, token=args.token, private=args.private or None)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, cache_dir=args.cache_dir, overwrite=args.overwrite)
    return 0


def load_calibration_dataset(source: str, split: str | None = None, token: str | None = None):
    """A Hub id, anything ``datasets.load_dataset`` reads from a local path, or a folder
    written by ``Dataset.save_to_disk``; a dataset dict gives ``split`` (default train)."""
    import datasets

    from .paths import could_be_hub_id

    path = Path(source)
    if _holds_no_rows(path):  # datasets fails on empty files and empty save_to_disk folders, in many ways
        raise CLIError(f"the calibration dataset '{source}' is empty")
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            data = datasets.load_from_disk(str(path))
        elif path.is_file():
            kind = DATASET_FILES.get(path.suffix.lower())
            if kind is None:
                raise CLIError(f"cannot read dataset file '{source}': use .csv, .json, .jsonl, .parquet or .txt")
            data = datasets.load_dataset(kind, data_files=str(path))
        elif path.suffix.lower() in DATASET_FILES:  # a file, not a Hub id
            raise CLIError(f"dataset file '{source}' not found")
        elif path.is_dir() or could_be_hub_id(source):
            data = datasets.load_dataset(source, token=token)
        else:
            raise CLIError(f"dataset '{source}' not found")
    except CLIError:
        raise
    except (OSError, ValueError, ImportError, datasets.exceptions.DatasetsError) as err:  # missing, unreadable
        raise CLIError(f"cannot load dataset '{source}': {' '.join(str(err).split())[:300]}") from err
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
    # the card's metadata names a Hub dataset as given (datasets keeps a snake-cased last part of the
    # name or of a local folder's path) and a local one not at all
    data.info.dataset_name = None if path.exists() else source
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

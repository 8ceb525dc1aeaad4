"""All-or-nothing output folders and safetensors checkpoints (sharded, never pickle).

A merge writes into a hidden temporary folder beside its target and moves it into place only
once everything is written, so an error or Ctrl-C never leaves a half-written model behind and
never destroys the folder that was there before.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


class OutputError(ValueError):
    """An output folder cannot be written where or how it was asked."""


class CheckpointError(ValueError):
    """A safetensors checkpoint is missing, truncated or corrupt."""


def _resolve(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_dir(out: str | Path, *, overwrite: bool = False, protected: Sequence[str | Path] = ()) -> None:
    """Raise :class:`OutputError` if ``out`` may not be (over)written (call it before long work)."""
    target = _resolve(out)
    for entry in protected:
        folder = _resolve(entry)
        if folder.exists() and _overlaps(target, folder):
            raise OutputError(
                f"refusing to write to {target}: it is, contains or lies inside the input folder {folder};"
                " choose another output folder"
            )
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a folder; choose another output path")
    cwd = Path.cwd().resolve()
    if target.parent == target or (target.exists() and (target == cwd or target in cwd.parents)):
        raise OutputError(
            f"refusing to replace {target}: it contains the current working directory; choose another folder"
        )
    if target.is_dir() and not overwrite and any(target.iterdir()):
        raise OutputError(
            f"{target} exists and is not empty; pass overwrite=True / --overwrite or choose another folder"
        )


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing ancestors; return the ones created, innermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside first and deleted last."""
    if not target.exists():
        os.rename(tmp, target)
        return
    aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    if aside.exists():
        logger.warning("could not delete the previous output, left at %s", aside)


@contextmanager
def atomic_output_dir(
    out: str | Path, *, overwrite: bool = False, protected: Sequence[str | Path] = ()
) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; move it to ``out`` when the block succeeds.

    Refused up front (:class:`OutputError`): ``out`` is, contains or lies inside a ``protected``
    folder (the parents' own folders; entries that are not existing paths, e.g. Hub ids, are
    ignored), ``out`` is a file, or a non-empty folder without ``overwrite``. On success the
    folder must hold no pickle file. On any exception (KeyboardInterrupt included) the
    temporary folder is removed, a pre-existing ``out`` is left untouched, and the error re-raised.
    """
    target = _resolve(out)
    check_output_dir(target, overwrite=overwrite, protected=protected)
    created = _make_parents(target.parent)
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        yield tmp
        assert_no_pickle(tmp)
        check_output_dir(target, overwrite=overwrite, protected=protected)
        _move_into_place(tmp, target)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


def assert_no_pickle(folder: str | Path) -> None:
    """Raise :class:`OutputError` if ``folder`` holds any pickle-based weight file."""
    root = Path(folder)
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise OutputError(f"pickle files in the output ({', '.join(found)}); only safetensors may be written")


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def _standalone(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous tensors of which no two share storage (later sharers are cloned)."""
    seen: set[tuple[str, int]] = set()
    result = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().contiguous()
        key = _storage_key(tensor)
        if key in seen:
            tensor = tensor.clone()
            key = _storage_key(tensor)
        seen.add(key)
        result[name] = tensor
    return result


def save_safetensors_sharded(
    state_dict: dict[str, torch.Tensor],
    folder: str | Path,
    *,
    max_shard_size: int | str = "5GB",
    prefix: str = "model",
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """Write ``state_dict`` as ``{prefix}.safetensors`` or shards plus an index, transformers' layout.

    Shards are ``{prefix}-00001-of-0000N.safetensors`` with ``{prefix}.safetensors.index.json``.
    Returns the file names written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _standalone(state_dict)
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern=prefix + "{suffix}.safetensors", max_shard_size=max_shard_size
    )
    file_metadata = {"format": "pt", **(metadata or {})}
    for filename, names in split.filename_to_tensors.items():
        save_file({name: tensors[name] for name in names}, str(folder / filename), metadata=file_metadata)
    written = list(split.filename_to_tensors)
    if split.is_sharded:
        index_name = f"{prefix}.safetensors.index.json"
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(index_name)
    return written


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError as err:
        raise CheckpointError(f"missing checkpoint file {path}") from err
    except (SafetensorError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot read {path} ({reason}); the file is truncated or corrupt") from err


def _read_index(path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot read {path}: not a safetensors index with a weight_map") from err
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"cannot read {path}: weight_map is not a mapping")
    return weight_map


def _load_sharded(folder: Path, index_path: Path) -> dict[str, torch.Tensor]:
    weight_map = _read_index(index_path)
    state: dict[str, torch.Tensor] = {}
    for filename in dict.fromkeys(weight_map.values()):
        state.update(_load_file(folder / filename))
    missing = [name for name in weight_map if name not in state]
    if missing:
        raise CheckpointError(f"{index_path} lists {len(missing)} tensors absent from its shards, e.g. {missing[0]}")
    return state


def load_safetensors_folder(folder: str | Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    """Read ``{prefix}.safetensors`` or the shards listed by ``{prefix}.safetensors.index.json``."""
    folder = Path(folder)
    index_path = folder / f"{prefix}.safetensors.index.json"
    if index_path.is_file():
        return _load_sharded(folder, index_path)
    single = folder / f"{prefix}.safetensors"
    if single.exists():
        return _load_file(single)
    raise CheckpointError(f"no {single.name} nor {index_path.name} in {folder}")

"""All-or-nothing output folders, never holding pickle checkpoints.

A merge writes into a hidden temporary folder beside its target and moves it into place only
once everything is written, so an error or Ctrl-C never leaves a half-written model behind and
never destroys the folder that was there before.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence


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
    above = next(p for p in target.parents if p.exists())  # the folders it needs are made inside this one
    if not target.exists() and not above.is_dir():
        raise OutputError(f"cannot make {target}: {above} is a file, not a folder; choose another output path")
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

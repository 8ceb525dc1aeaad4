"""Tensors that wait out of the process's memory: written by key into an unlinked temporary file and
read back when needed. A merge's repairs hold per-batch activations that grow with the calibration data
(at BERT-base and 1000 texts, 0.27 GB of hidden states per model and 1.1 GB of FFN activations); the
system's file cache keeps them while memory allows and writes them out when it does not."""
from __future__ import annotations

import ctypes
import functools
import sys
import tempfile
import weakref
from typing import IO, Callable, Hashable

import numpy as np
import torch
from torch import Tensor


class Spill:
    """A store of CPU tensors in one unlinked temporary file (``tempfile``'s folder, ``TMPDIR``), by key.
    :meth:`put` writes a tensor's bytes; writing a key again with as many bytes reuses its place in the
    file, so that a store refilled layer after layer stays the size of one layer (and rewriting pages the
    file cache already holds costs a tenth of writing new ones). :meth:`get` reads a new tensor, the same
    bits as the one written."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._where: dict[Hashable, tuple[int, int, torch.Size, torch.dtype]] = {}  # offset, bytes, shape, dtype
        self._end = 0
        self._broken = False

    def put(self, key: Hashable, tensor: Tensor) -> bool:
        """Write ``tensor`` under ``key`` (replacing what it held); False, writing nothing, for a tensor
        off the CPU or when the file cannot be written (a full disk: from then on every put is refused),
        so that the caller keeps that tensor in memory."""
        if tensor.device.type != "cpu" or self._broken:
            return False
        data = tensor_bytes(tensor)
        place = self._where.pop(key, None)
        offset = place[0] if place is not None and place[1] == data.nbytes else self._end
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="hf_mudsc-spill-")
                weakref.finalize(self, self._file.close)  # closed with the store (the file is already unlinked)
            self._file.seek(offset)
            self._file.write(memoryview(data))
        except OSError:
            self._broken = True
            return False
        self._end = max(self._end, offset + data.nbytes)
        self._where[key] = (offset, data.nbytes, tensor.shape, tensor.dtype)
        return True

    def get(self, key: Hashable) -> Tensor:
        """A new tensor holding what :meth:`put` wrote under ``key``."""
        offset, size, shape, dtype = self._where[key]
        out = torch.empty(shape, dtype=dtype)
        view = memoryview(tensor_bytes(out))  # a view: the read fills ``out``
        self._file.seek(offset)
        done = 0
        while done < size:
            n = self._file.readinto(view[done:])
            if not n:
                raise OSError(f"the spill file ended {size - done} bytes early")
            done += n
        return out

    def __contains__(self, key: Hashable) -> bool:
        return key in self._where


def tensor_bytes(t: Tensor) -> np.ndarray:
    """The elements of ``t`` as a flat uint8 numpy array (any dtype, bfloat16 included, which numpy
    lacks): a view of ``t`` itself when it is a contiguous CPU tensor, else of a contiguous CPU copy."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).
    Per-batch tensors of a few MB come from the heap, and batches of different lengths leave it holding
    freed memory between them (1.2 GB at the peak of a BERT-base repair of 1000 texts)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None

"""A symmetric matrix kept as its upper-triangular blocks: the activation correlations a merger holds
between its statistics pass and its solves, in a little over half the memory of whole matrices (at
BERT-base, 12 FFN spaces of 6144 units: 1.0 instead of 1.8 GB float32), and out of the process's
memory between solves (:meth:`SymmetricBlocks.to_disk`)."""
from __future__ import annotations

import tempfile
import weakref
from typing import IO, Any, Mapping, Sequence

import numpy as np


class SymmetricBlocks:
    """A symmetric ``D x D`` matrix from its blocks ``(p, q)``, ``p <= q``, of the cuts ``edges``
    (``0 = edges[0] < ... < edges[-1] = D``); a diagonal block is whole (and symmetric).

    Read as numpy reads a matrix, each read a new array of the blocks' dtype: ``m[i:j]`` (whole rows),
    ``m[rows, cols]`` (entries at index arrays), :meth:`diagonal`, and ``np.asarray(m)`` (the whole
    matrix, for small ones and tests); :meth:`copy_to` writes the whole matrix into a given one. Every
    read returns exactly the stored values, in memory or on disk.
    """

    def __init__(self, blocks: Mapping[tuple[int, int], np.ndarray], edges: Sequence[int]) -> None:
        self.edges = [int(e) for e in edges]
        n = len(self.edges) - 1
        if n < 1 or any(a >= b for a, b in zip(self.edges[:-1], self.edges[1:])) or self.edges[0] != 0:
            raise ValueError(f"edges must rise from 0, got {list(edges)}")
        if set(blocks) != {(p, q) for p in range(n) for q in range(p, n)}:
            raise ValueError("blocks must be exactly the upper-triangular blocks (p <= q) of the edges")
        for (p, q), block in blocks.items():
            if block.shape != (self.edges[p + 1] - self.edges[p], self.edges[q + 1] - self.edges[q]):
                raise ValueError(f"block {(p, q)} has shape {block.shape}, not that of the edges")
        self._blocks = dict(blocks)
        self._file: IO[bytes] | None = None
        self.dtype = self._blocks[0, 0].dtype
        self.shape = (self.edges[-1], self.edges[-1])

    def to_disk(self) -> bool:
        """Move the blocks into an unlinked temporary file (in ``tempfile``'s folder, ``TMPDIR``), read
        through a read-only memory map: a read maps their pages in, :meth:`release` maps them out, and
        the system may drop them from memory in between (they are on disk). Returns whether they are
        on disk: they stay in memory when the file cannot be written (a full disk)."""
        if self._file is not None:
            return True
        file = tempfile.TemporaryFile(prefix="hf_mudsc-correlation-")
        try:
            for block in self._blocks.values():
                file.write(np.ascontiguousarray(block).data)
            file.flush()
        except OSError:
            file.close()
            return False
        self._file = file
        weakref.finalize(self, file.close)  # closed with the blocks (the file is already unlinked)
        self.release()
        return True

    def release(self) -> None:
        """Map the blocks anew from their file, so that the pages earlier reads mapped leave the
        process's memory (stay in the system's file cache, which may drop them); in memory: nothing."""
        if self._file is None:
            return
        mapped, start = np.memmap(self._file, dtype=self.dtype, mode="r"), 0
        for key, block in self._blocks.items():
            self._blocks[key] = mapped[start:start + block.size].reshape(block.shape)
            start += block.size

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles hold the blocks themselves (a file is not copied); on disk again when loaded."""
        return {"blocks": {key: np.array(block) for key, block in self._blocks.items()}, "edges": self.edges,
                "on_disk": self._file is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["blocks"], state["edges"])
        if state["on_disk"]:
            self.to_disk()

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._blocks.values())

    def __getitem__(self, key: slice | tuple[Any, Any]) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("row slices of a SymmetricBlocks take no step")
            return self._rows(start, max(start, stop))
        if isinstance(key, tuple) and len(key) == 2:
            return self._entries(*key)
        raise IndexError("index a SymmetricBlocks by a row slice m[i:j] or by index arrays m[rows, cols]")

    def copy_to(self, out: np.ndarray) -> np.ndarray:
        """The whole matrix written into ``out`` (of its shape; the values cast to ``out``'s dtype)."""
        if out.shape != self.shape:
            raise ValueError(f"out has shape {out.shape}, not {self.shape}")
        return self._rows(0, len(self), out=out)

    def _rows(self, start: int, stop: int, dtype: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((stop - start, self.shape[1]), dtype=self.dtype if dtype is None else dtype)
        e = self.edges
        for (p, q), block in self._blocks.items():
            lo, hi = max(start, e[p]), min(stop, e[p + 1])  # the block's own rows
            if lo < hi:
                out[lo - start:hi - start, e[q]:e[q + 1]] = block[lo - e[p]:hi - e[p]]
            lo, hi = max(start, e[q]), min(stop, e[q + 1])  # its mirror below the diagonal
            if p != q and lo < hi:
                out[lo - start:hi - start, e[p]:e[p + 1]] = block[:, lo - e[q]:hi - e[q]].T
        return out

    def _entries(self, rows: Any, cols: Any) -> np.ndarray:
        r, c = np.broadcast_arrays(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))
        if r.size and (min(r.min(), c.min()) < 0 or max(r.max(), c.max()) >= len(self)):
            raise IndexError(f"indices out of range for a {len(self)} x {len(self)} matrix")
        lo, hi = np.minimum(r, c).reshape(-1), np.maximum(r, c).reshape(-1)
        p, q = (np.searchsorted(self.edges, x, side="right") - 1 for x in (lo, hi))
        out = np.empty(lo.shape, dtype=self.dtype)
        for (bp, bq), block in self._blocks.items():
            sel = np.flatnonzero((p == bp) & (q == bq))
            if len(sel):
                out[sel] = block[lo[sel] - self.edges[bp], hi[sel] - self.edges[bq]]
        return out.reshape(r.shape)

    def diagonal(self) -> np.ndarray:
        return np.concatenate([self._blocks[p, p].diagonal() for p in range(len(self.edges) - 1)])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("a SymmetricBlocks has no whole matrix to give without a copy")
        return self._rows(0, len(self), dtype)

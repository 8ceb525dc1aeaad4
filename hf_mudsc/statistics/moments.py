"""Running first and second moments, shifted (so that the covariance does not cancel) and
accumulated in float64 across batches, with each batch's outer products in the features' own
precision (float32 for float32 or lower-precision activations) and only the upper-triangular
blocks of the second moment stored and computed."""
from __future__ import annotations

from itertools import pairwise
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from .symmetric import SymmetricBlocks

# A unit whose standard deviation is below this fraction of |mean| is float64 rounding noise
# around a constant: it is treated as constant (correlation 0 with everything).
_CONSTANT_RTOL = 1e-12
BLOCK = 768  # units per block of the second-moment accumulator


class Moments:
    """Running first and second moments of a ``dim``-vector.

    Keeps ``n``, ``shift``, ``s1 = sum(x - shift)`` and ``s2 = sum((x - shift)(x - shift)^T)``
    (float64). ``shift`` is the first batch's mean (exactly the value of units constant in that
    batch), so the covariance ``s2/n - (s1/n)(s1/n)^T`` does not cancel for features with a
    large mean, and a constant unit has a variance of exactly 0.

    ``s2`` is kept as its upper-triangular blocks of :data:`BLOCK` units (about half the
    memory and the products of a full matrix). One batch's block products are computed in
    float32 unless the features are float64 (then in float64), and added in float64: with
    ``N`` samples in the largest batch and ``u = 2**-24``, every entry of ``s2`` is within
    ``(N + 2) * u * sum_k |y_ka| |y_kb|`` of its exact value (``y = x - shift``), plus float64
    rounding (tested).
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.device = torch.device(device)
        self.n = 0
        self.shift = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.s1 = torch.zeros(dim, dtype=torch.float64, device=self.device)
        edges = [*range(0, dim, BLOCK), dim]
        self._cuts = [slice(a, b) for a, b in pairwise(edges)]
        shapes = {(p, q): (a.stop - a.start, b.stop - b.start)
                  for p, a in enumerate(self._cuts) for q, b in enumerate(self._cuts) if p <= q}
        # the blocks are views of one allocation: freed at once and given back to the system, where
        # many blocks of a few MB would stay behind in the allocator's heap
        storage = torch.zeros(sum(r * c for r, c in shapes.values()), dtype=torch.float64, device=self.device)
        self._s2, start = {}, 0
        for key, (r, c) in shapes.items():
            self._s2[key] = storage[start:start + r * c].view(r, c)
            start += r * c

    def update(self, x: Tensor) -> Moments:
        """Add the rows of ``x`` (samples, dim), any float dtype or device, as samples."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (samples, {self.dim}) features, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        product = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(device=self.device, dtype=torch.float64)
        if self.n == 0:
            constant = (x == x[0]).all(dim=0)
            self.shift = torch.where(constant, x[0], x.mean(dim=0))
        y = x - self.shift
        self.s1 += y.sum(dim=0)
        y = y.to(product)
        for (p, q), block in self._s2.items():
            block += y[:, self._cuts[p]].T @ y[:, self._cuts[q]]
        self.n += x.shape[0]
        return self

    @property
    def s2(self) -> Tensor:
        """The full symmetric ``sum((x - shift)(x - shift)^T)`` (float64, a new tensor)."""
        return self._assemble(self._upper(lambda p, q, block: block), torch.float64)

    def recentre(self, shift: Tensor) -> Moments:
        """Express the sums relative to a new ``shift`` (exact; in place)."""
        shift = shift.to(device=self.device, dtype=torch.float64)
        delta = self.shift - shift  # x - shift = (x - self.shift) + delta
        for (p, q), block in self._s2.items():
            a, b = self._cuts[p], self._cuts[q]
            block += (torch.outer(self.s1[a], delta[b]) + torch.outer(delta[a], self.s1[b])
                      + self.n * torch.outer(delta[a], delta[b]))
        self.s1 += self.n * delta
        self.shift = shift.clone()
        return self

    def merge(self, other: Moments) -> Moments:
        """Add ``other``'s samples (exact for any two shifts; in place; ``other`` unchanged)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {other.dim} into dimension {self.dim}")
        if other.n == 0:
            return self
        theirs = Moments.from_dict(other.to_dict(), device=self.device)
        if self.n == 0:
            self.shift = theirs.shift
        theirs.recentre(self.shift)
        self.s1 += theirs.s1
        for key, block in self._s2.items():
            block += theirs._s2[key]
        self.n += theirs.n
        return self

    @property
    def mean(self) -> Tensor:
        """Mean of the samples (float64)."""
        self._require_samples()
        return self.shift + self.s1 / self.n

    @property
    def cov(self) -> Tensor:
        """Population covariance (divides by ``n``; float64, symmetric)."""
        self._require_samples()
        m = self.s1 / self.n
        return self._assemble(self._upper(
            lambda p, q, block: (block / self.n).addr_(m[self._cuts[p]], m[self._cuts[q]], alpha=-1.0)), torch.float64)

    def corr(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Pearson correlation as ``dtype`` (computed in float64, block by block), never NaN.

        A constant unit (zero variance) has correlation 0 with every unit, itself included:
        the diagonal is 1 for non-constant units and 0 for constant ones.
        """
        return self._assemble(self._corr_blocks(dtype), dtype)

    def correlation(self, dtype: torch.dtype = torch.float32) -> SymmetricBlocks:
        """:meth:`corr` (the same values) as a :class:`SymmetricBlocks` of numpy arrays on the CPU,
        its upper blocks only: what a merger keeps for its solves. The blocks are views of one
        allocation, as the sums are (blocks of a few MB each would stay behind in the heap once freed)."""
        storage = torch.empty(sum(b.numel() for b in self._s2.values()), dtype=dtype)
        blocks, start = {}, 0
        for key, block in self._corr_blocks(dtype):
            view = storage[start:start + block.numel()].view(block.shape)
            blocks[key] = view.copy_(block).numpy()
            start += block.numel()
        return SymmetricBlocks(blocks, [c.start for c in self._cuts] + [self.dim])

    def _corr_blocks(self, dtype: torch.dtype) -> Iterator[tuple[tuple[int, int], Tensor]]:
        """The upper blocks of the correlation as ``dtype``, one at a time; a diagonal block exactly
        symmetric, its diagonal 1 (0 for a constant unit)."""
        self._require_samples()
        m = self.s1 / self.n
        var = torch.cat([self._s2[p, p].diagonal() for p in range(len(self._cuts))]) / self.n - m * m
        std = var.clamp(min=0).sqrt()
        live = std > _CONSTANT_RTOL * self.mean.abs()
        inv = torch.zeros_like(std)
        inv[live] = std[live].reciprocal()

        def block_corr(p: int, q: int, block: Tensor) -> Tensor:
            a, b = self._cuts[p], self._cuts[q]
            c = (block / self.n).addr_(m[a], m[b], alpha=-1.0)
            # scaled one side at a time: inv_i * inv_j alone may overflow for tiny variances (0 * inf = NaN)
            return c.mul_(inv[a].unsqueeze(1)).mul_(inv[b].unsqueeze(0)).clamp_(-1.0, 1.0)

        for (p, q), c in self._upper(block_corr):
            if p == q:
                c.diagonal().copy_(live[self._cuts[p]].to(c.dtype))
            yield (p, q), c.to(dtype)

    def to_dict(self) -> dict[str, Tensor]:
        """The state as tensors (``n`` as an int64 scalar, ``s2`` in full), for caching and reduction."""
        return {"n": torch.tensor(self.n, dtype=torch.int64), "shift": self.shift.clone(),
                "s1": self.s1.clone(), "s2": self.s2}

    @classmethod
    def from_dict(cls, state: Mapping[str, Tensor], device: torch.device | str | None = None) -> Moments:
        """Rebuild from :meth:`to_dict` (on ``device``, default the tensors' device)."""
        s1 = state["s1"]
        m = cls(s1.shape[0], device=s1.device if device is None else device)
        m.n = int(state["n"])
        m.shift = state["shift"].to(device=m.device, dtype=torch.float64).clone()
        m.s1 = s1.to(device=m.device, dtype=torch.float64).clone()
        s2 = state["s2"]
        for (p, q), block in m._s2.items():
            block.copy_(s2[m._cuts[p], m._cuts[q]])
        return m

    def _upper(self, fn: Callable[[int, int, Tensor], Tensor]) -> Iterator[tuple[tuple[int, int], Tensor]]:
        """``fn(p, q, block)`` of every upper block of the sums, a diagonal one made exactly symmetric
        (a new tensor)."""
        for (p, q), block in self._s2.items():
            value = fn(p, q, block)
            yield (p, q), (value + value.T) / 2 if p == q else value

    def _assemble(self, blocks: Iterable[tuple[tuple[int, int], Tensor]], dtype: torch.dtype) -> Tensor:
        """The full symmetric matrix from its upper ``blocks`` (:meth:`_upper`), as ``dtype``."""
        out = torch.empty(self.dim, self.dim, dtype=dtype, device=self.device)
        for (p, q), value in blocks:
            a, b = self._cuts[p], self._cuts[q]
            out[a, b] = value
            if p != q:
                out[b, a] = value.T
        return out

    def _require_samples(self) -> None:
        if self.n == 0:
            raise ValueError("no samples were accumulated")

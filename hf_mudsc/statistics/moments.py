"""Running float64 first and second moments (shifted, so that the covariance does not cancel)."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

# A unit whose standard deviation is below this fraction of |mean| is float64 rounding noise
# around a constant: it is treated as constant (correlation 0 with everything).
_CONSTANT_RTOL = 1e-12


class Moments:
    """Running float64 first and second moments of a ``dim``-vector.

    Keeps ``n``, ``shift``, ``s1 = sum(x - shift)`` and ``s2 = sum((x - shift)(x - shift)^T)``.
    ``shift`` is the first batch's mean (exactly the value of units constant in that batch), so
    the covariance ``s2/n - (s1/n)(s1/n)^T`` does not cancel for features with a large mean, and
    a constant unit has a variance of exactly 0.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.device = torch.device(device)
        self.n = 0
        self.shift = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.s1 = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.s2 = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def update(self, x: Tensor) -> Moments:
        """Add the rows of ``x`` (samples, dim), any float dtype or device, as samples."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (samples, {self.dim}) features, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        x = x.to(device=self.device, dtype=torch.float64)
        if self.n == 0:
            constant = (x == x[0]).all(dim=0)
            self.shift = torch.where(constant, x[0], x.mean(dim=0))
        y = x - self.shift
        self.s1 += y.sum(dim=0)
        self.s2.addmm_(y.T, y)
        self.n += x.shape[0]
        return self

    def recentre(self, shift: Tensor) -> Moments:
        """Express the sums relative to a new ``shift`` (exact; in place)."""
        shift = shift.to(device=self.device, dtype=torch.float64)
        delta = self.shift - shift  # x - shift = (x - self.shift) + delta
        self.s2 += torch.outer(self.s1, delta) + torch.outer(delta, self.s1) + self.n * torch.outer(delta, delta)
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
        self.s2 += theirs.s2
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
        c = (self.s2 / self.n).addr_(m, m, alpha=-1.0)
        return c.add_(c.T.clone()).mul_(0.5)  # exactly symmetric

    def corr(self) -> Tensor:
        """Pearson correlation, never NaN.

        A constant unit (zero variance) has correlation 0 with every unit, itself included:
        the diagonal is 1 for non-constant units and 0 for constant ones.
        """
        corr = self.cov  # a fresh D x D tensor: everything below works in place on it
        std = corr.diagonal().clamp(min=0).sqrt()
        live = std > _CONSTANT_RTOL * self.mean.abs()
        inv = torch.zeros_like(std)
        inv[live] = std[live].reciprocal()
        # scaled one side at a time: inv_i * inv_j alone may overflow for tiny variances (0 * inf = NaN)
        corr.mul_(inv.unsqueeze(1)).mul_(inv.unsqueeze(0)).clamp_(-1.0, 1.0)
        corr.diagonal().copy_(live.to(corr.dtype))
        return corr

    def to_dict(self) -> dict[str, Tensor]:
        """The state as tensors (``n`` as an int64 scalar), for caching and reduction."""
        return {"n": torch.tensor(self.n, dtype=torch.int64), "shift": self.shift.clone(),
                "s1": self.s1.clone(), "s2": self.s2.clone()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Tensor], device: torch.device | str | None = None) -> Moments:
        """Rebuild from :meth:`to_dict` (on ``device``, default the tensors' device)."""
        s1 = state["s1"]
        m = cls(s1.shape[0], device=s1.device if device is None else device)
        m.n = int(state["n"])
        m.shift = state["shift"].to(device=m.device, dtype=torch.float64).clone()
        m.s1 = s1.to(device=m.device, dtype=torch.float64).clone()
        m.s2 = state["s2"].to(device=m.device, dtype=torch.float64).clone()
        return m

    def _require_samples(self) -> None:
        if self.n == 0:
            raise ValueError("no samples were accumulated")


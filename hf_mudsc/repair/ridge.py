"""Ridge regression pulled towards a current linear map, from streamed float64 sums.

``argmin_W ||X~ W~ - Y||^2 + lam ||W~ - W~0||^2`` with ``X~ = [X, 1]`` (a bias column when the
map has a bias) and ``lam = LAMBDA_SCALE * mean(diag(X~^T X~))``: the normal equations
``(G + lam I) W~ = X~^T Y + lam W~0`` need only the Gram ``G`` and the cross sums, accumulated
batch by batch, never the samples.
"""
from __future__ import annotations

import torch
from torch import Tensor

LAMBDA_SCALE = 1e-3
# The Gram is summed as its block rows of this many rows, each from its diagonal block on (the
# rest, below, stays 0: Cholesky reads the upper triangle): at 3073 inputs (BERT-base's FFN output map)
# 57% of the products of the whole matrix.
GRAM_BLOCK = 512


class RidgeSums:
    """Streamed ``X~^T X~`` (its upper block triangle, :data:`GRAM_BLOCK` wide) and ``X~^T Y``
    (float64) of one linear map."""

    def __init__(self, bias: bool) -> None:
        self.bias = bias
        self.gram: Tensor | None = None
        self.cross: Tensor | None = None
        self.n = 0

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add samples: ``x`` (rows, d_in) inputs, ``y`` (rows, d_out) wanted outputs."""
        x, y = x.to(torch.float64), y.to(device=x.device, dtype=torch.float64)
        if self.bias:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        if self.gram is None:
            self.gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self.cross = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, device=x.device)
        for i in range(0, x.shape[1], GRAM_BLOCK):
            self.gram[i:i + GRAM_BLOCK, i:].addmm_(x[:, i:i + GRAM_BLOCK].T, x[:, i:])
        self.cross.addmm_(x.T, y)
        self.n += x.shape[0]

    def output_moments(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """Per-unit mean and (population) standard deviation of ``x W^T + b`` over the samples
        (float64), from the sums alone: ``W mu + b`` and ``diag(W C W^T)``, ``C`` the inputs'
        covariance. Needs the bias column."""
        if self.gram is None or self.n == 0 or not self.bias:
            raise ValueError("output moments need samples summed with a bias column")
        w = weight.detach().to(device=self.gram.device, dtype=torch.float64)
        gram = _mirrored(self.gram)
        mean_x = gram[-1, :-1] / self.n
        cov = gram[:-1, :-1] / self.n - torch.outer(mean_x, mean_x)
        mean = w @ mean_x + bias.detach().to(w)
        return mean, ((w @ cov) * w).sum(dim=1).clamp(min=0).sqrt()

    def solve(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The map ``(weight (d_out, d_in), bias)`` nearest to the current one that fits the samples."""
        if self.gram is None or self.n == 0:
            raise ValueError("no samples to fit a linear map on")
        current = weight.detach().to(device=self.gram.device, dtype=torch.float64).T
        if self.bias:
            current = torch.cat([current, bias.detach().to(current).unsqueeze(0)], dim=0)
        lam = LAMBDA_SCALE * self.gram.diagonal().mean()
        system = self.gram.clone()
        system.diagonal().add_(lam)
        rhs = self.cross + lam * current
        # G + lam I is symmetric positive definite when lam > 0: Cholesky, half the work of LU; it
        # reads the upper triangle only, which the sums hold
        factor, info = torch.linalg.cholesky_ex(system, upper=True)
        if int(info) == 0:
            solved = torch.cholesky_solve(rhs, factor, upper=True)
        else:
            solved = torch.linalg.solve(_mirrored(system), rhs)
        if self.bias:
            return solved[:-1].T, solved[-1]
        return solved.T, None


def _mirrored(upper: Tensor) -> Tensor:
    """The whole symmetric matrix (a new one) whose upper triangle ``upper`` holds."""
    return torch.triu(upper) + torch.triu(upper, diagonal=1).T

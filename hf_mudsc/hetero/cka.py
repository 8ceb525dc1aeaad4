"""Linear CKA between the layers of two models, accumulated over batches, and the layer
alignment that maximises it (DESIGN §4).

Linear CKA of features X (n x p) and Y (n x q), both centred:
``||C_xy||_F^2 / (||C_xx||_F ||C_yy||_F)`` with C the (population) covariance blocks. It is
computed from covariance blocks accumulated batch by batch (float64, shifted by the first
batch's mean), so no activation is kept. This is the usual biased HSIC estimator: its bias is
O(1/n) and the statistics pass sees thousands of tokens.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


class LayerCKA:
    """Running covariance blocks of every layer of model A against every layer of model B."""

    def __init__(self, dims_a: Sequence[int], dims_b: Sequence[int]) -> None:
        self.dims = (list(dims_a), list(dims_b))
        self.n = 0
        self.shift: tuple[Tensor, Tensor] | None = None
        self.s1 = [torch.zeros(sum(d), dtype=torch.float64) for d in self.dims]
        self.within = [[torch.zeros(d, d, dtype=torch.float64) for d in dims] for dims in self.dims]
        self.cross = torch.zeros(sum(self.dims[0]), sum(self.dims[1]), dtype=torch.float64)

    def update(self, layers_a: Sequence[Tensor], layers_b: Sequence[Tensor]) -> "LayerCKA":
        """Add one batch: per layer, (samples, units) features; samples align across all layers."""
        xs = [torch.cat([t.detach().to("cpu", torch.float64) for t in layers], dim=1) for layers in (layers_a, layers_b)]
        for x, dims in zip(xs, self.dims):
            if x.shape[1] != sum(dims) or x.shape[0] != xs[0].shape[0]:
                raise ValueError(f"expected (samples, {sum(dims)}) features per model, got {tuple(x.shape)}")
        if xs[0].shape[0] == 0:
            return self
        if self.shift is None:
            self.shift = (xs[0].mean(0), xs[1].mean(0))
        ys = [x - s for x, s in zip(xs, self.shift)]
        for m, (y, dims) in enumerate(zip(ys, self.dims)):
            self.s1[m] += y.sum(0)
            for block, part in zip(self.within[m], y.split(dims, dim=1)):
                block.addmm_(part.T, part)
        self.cross.addmm_(ys[0].T, ys[1])
        self.n += xs[0].shape[0]
        return self

    def matrix(self) -> np.ndarray:
        """CKA of every (layer of A, layer of B) pair; a constant layer gives 0."""
        if self.n == 0:
            raise ValueError("no samples were accumulated for the layer alignment")
        means = [s / self.n for s in self.s1]
        norms = []
        for m, dims in enumerate(self.dims):
            parts = means[m].split(dims)
            norms.append([torch.linalg.matrix_norm(b / self.n - torch.outer(mu, mu)) for b, mu in zip(self.within[m], parts)])
        cross = self.cross / self.n - torch.outer(means[0], means[1])
        out = np.zeros((len(self.dims[0]), len(self.dims[1])))
        for a, rows in enumerate(cross.split(self.dims[0], dim=0)):
            for b, block in enumerate(rows.split(self.dims[1], dim=1)):
                denom = float(norms[0][a] * norms[1][b])
                out[a, b] = float(block.square().sum()) / denom if denom > 0 else 0.0
        return out


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two feature matrices (samples, units), in one batch."""
    return float(LayerCKA([x.shape[1]], [y.shape[1]]).update([x], [y]).matrix()[0, 0])


def align_layers(score: np.ndarray) -> tuple[int, ...]:
    """The strictly increasing map from the rows (layers of the shallower model) to the columns
    (layers of the deeper one) that maximises the summed score; ties go to the earliest map
    (lexicographically smallest). ``score`` is (shallow, deep) with shallow <= deep.
    """
    score = np.asarray(score, dtype=np.float64)
    rows, cols = score.shape
    if rows > cols:
        raise ValueError(f"cannot map {rows} layers into {cols} strictly increasingly")
    # best[i][j]: best sum for rows i.. with row i mapped to a column >= j (filled from the end)
    best = np.full((rows + 1, cols + 1), -np.inf)
    best[rows, :] = 0.0
    for i in range(rows - 1, -1, -1):
        for j in range(cols - (rows - i), -1, -1):
            take = score[i, j] + best[i + 1, j + 1]
            best[i, j] = max(take, best[i, j + 1])
    out, j = [], 0
    for i in range(rows):  # the earliest column that still reaches the optimum
        while score[i, j] + best[i + 1, j + 1] < best[i, j] - 1e-12 * (1 + abs(best[i, j])):
            j += 1
        out.append(j)
        j += 1
    return tuple(out)

"""Per-space merge transforms, stored as assignments.

For a space and model i, ``assign[i][j]`` is the merged unit that unit j of model i goes to.
This is all the information in the paper's matrices: the unmerge U_i (d_i x k) is 0/1 with
``U_i[j, assign[i][j]] = 1``, and the merge M_i (k x d_i) averages the members of each merged
unit over all models, ``M_i[c, j] = 1 / count(c)``. Matrices are never materialised: every
operation is an ``index_add`` along one axis, so a 3072-unit space costs O(d), not O(d^2).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .unitmaps.spaces import UnitMap

TRANSFORMS_NAME = "merge_transforms.safetensors"


@dataclass(frozen=True)
class SpaceTransform:
    """The merge of one space: one assignment per model into ``k`` merged units."""

    assign: tuple[torch.Tensor, ...]
    k: int

    def __post_init__(self) -> None:
        fixed = tuple(torch.as_tensor(np.asarray(a), dtype=torch.long).reshape(-1) for a in self.assign)
        object.__setattr__(self, "assign", fixed)
        if not fixed:
            raise ValueError("a transform needs at least one model")
        for i, a in enumerate(fixed):
            if a.numel() and (a.min() < 0 or a.max() >= self.k):
                raise ValueError(f"assignment of model {i} points outside the {self.k} merged units")
        if not bool((self.counts() > 0).all()):
            raise ValueError("every merged unit needs at least one member")

    @classmethod
    def identity(cls, sizes: Sequence[int]) -> "SpaceTransform":
        """Plain averaging: unit j of every model goes to merged unit j."""
        return cls(tuple(torch.arange(d) for d in sizes), max(sizes))

    @property
    def num_models(self) -> int:
        return len(self.assign)

    def sizes(self) -> list[int]:
        return [a.numel() for a in self.assign]

    def counts(self) -> torch.Tensor:
        """Members of every merged unit, over all models."""
        return sum(self.model_counts(i) for i in range(self.num_models))

    def model_counts(self, i: int) -> torch.Tensor:
        """Members of every merged unit from model ``i`` alone."""
        return torch.bincount(self.assign[i], minlength=self.k)

    def is_permutation(self) -> bool:
        """Every model maps one-to-one onto the merged units."""
        return all(a.numel() == self.k and bool((self.model_counts(i) == 1).all()) for i, a in enumerate(self.assign))

    def merge(self, x: torch.Tensor, i: int, axis: int) -> torch.Tensor:
        """``M_i`` along an axis that writes the space: model i's share of the merged average
        (the weights ``1 / count`` in float64, so that float64 tensors get them exactly)."""
        return _scale(self._sum(x, i, axis), 1.0 / self.counts().to(torch.float64), axis)

    def unmerge(self, x: torch.Tensor, i: int, axis: int) -> torch.Tensor:
        """``U_i`` along an axis that reads the space: merged units feed model i's readers."""
        return self._sum(x, i, axis)

    def project(self, x: torch.Tensor, i: int, axis: int) -> torch.Tensor:
        """``pinv(U_i)`` along an axis that writes the space: model i alone in the merged frame."""
        n = self.model_counts(i).to(torch.float64)
        inv = torch.where(n > 0, 1.0 / n.clamp(min=1), torch.zeros_like(n))
        return _scale(self._sum(x, i, axis), inv, axis)

    def matrices(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense ``(M_i, U_i)``, for tests and inspection only."""
        d = self.assign[i].numel()
        u = torch.zeros(d, self.k, dtype=torch.float64)
        u[torch.arange(d), self.assign[i]] = 1.0
        return u.T / self.counts().to(torch.float64).unsqueeze(1), u

    def _sum(self, x: torch.Tensor, i: int, axis: int) -> torch.Tensor:
        """Sum the units of model i that share a merged unit, along ``axis``.

        The sum runs along the last axis: torch's CPU ``index_add_`` along a leading axis
        costs ~0.1 s even on tiny tensors, along the last one microseconds.
        """
        a = self.assign[i].to(x.device)
        if x.shape[axis] != a.numel():
            raise ValueError(f"axis {axis} has {x.shape[axis]} units, model {i}'s transform expects {a.numel()}")
        y = x.movedim(axis, -1)
        out = torch.zeros(*y.shape[:-1], self.k, dtype=x.dtype, device=x.device).index_add_(-1, a, y)
        return out.movedim(-1, axis)


def _scale(x: torch.Tensor, factor: torch.Tensor, axis: int) -> torch.Tensor:
    """``x`` (a new tensor of :meth:`SpaceTransform._sum`) scaled along ``axis``, in place."""
    shape = [1] * x.dim()
    shape[axis] = -1
    return x.mul_(factor.to(x.dtype).to(x.device).reshape(shape))


Transforms = dict[str, SpaceTransform]


def same(a: SpaceTransform | None, b: SpaceTransform | None) -> bool:
    """Whether two transforms (or their absence) are equal, by content."""
    if a is b:
        return True
    if a is None or b is None or a.k != b.k or len(a.assign) != len(b.assign):
        return False
    return all(torch.equal(x, y) for x, y in zip(a.assign, b.assign))


def identity_transforms(unit_maps: Sequence[UnitMap]) -> Transforms:
    """Plain weight averaging of models with identical shapes."""
    return {s.name: SpaceTransform.identity([m[s.name].dim for m in unit_maps]) for s in unit_maps[0].spaces}


def random_permutation(unit_map: UnitMap, seed: int = 0) -> Transforms:
    """A random function-preserving permutation of one model.

    Every space is permuted; spaces of one head group share a head permutation, and
    every head gets its own within-head permutation per space.
    """
    g = torch.Generator().manual_seed(seed)
    out: Transforms = {}
    head_perm: dict[str, torch.Tensor] = {}
    for s in unit_map.spaces:
        if s.heads is None:
            perm = torch.randperm(s.dim, generator=g)
        else:
            h, hd = s.heads.num_heads, s.heads.head_dim
            key = s.group or s.name
            if key not in head_perm:
                head_perm[key] = torch.randperm(h, generator=g)
            heads = head_perm[key]
            within = torch.stack([torch.randperm(hd, generator=g) for _ in range(h)])
            perm = (heads.unsqueeze(1) * hd + within).reshape(-1)
        out[s.name] = SpaceTransform((perm,), s.dim)
    return out


def invert(transform: SpaceTransform) -> torch.Tensor:
    """For a one-model permutation ``a``, the assignment that undoes it."""
    (a,) = transform.assign
    inv = torch.empty_like(a)
    inv[a] = torch.arange(a.numel())
    return inv


def save_transforms(transforms: Mapping[str, SpaceTransform], path: str) -> None:
    """Write transforms as safetensors: one int64 tensor per (space, model); the merged widths
    in one JSON metadata entry (a single key, so the file is byte-reproducible)."""
    tensors = {f"{name}/{i}": a.contiguous() for name, t in transforms.items() for i, a in enumerate(t.assign)}
    widths = json.dumps({name: t.k for name, t in transforms.items()}, sort_keys=True)
    save_file(tensors, path, metadata={"merged_units": widths})


def load_transforms(path: str) -> Transforms:
    """Read transforms written by :func:`save_transforms`."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        widths = json.loads((f.metadata() or {}).get("merged_units", "{}"))
    tensors = load_file(path)
    out: Transforms = {}
    for name, k in widths.items():
        n = sum(1 for t in tensors if t.rsplit("/", 1)[0] == name)
        out[name] = SpaceTransform(tuple(tensors[f"{name}/{i}"] for i in range(n)), int(k))
    return out

"""Unit similarity: activation correlation, weight correlation, and their dual-space blend.

All matrices are square over the concatenated units of all models (model i's units at
``offsets[i]:offsets[i] + d_i``), numpy arrays with values in [-1, 1].
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Collection, Iterator, Mapping, Sequence

import numpy as np
import torch

from .spill import Spill
from .statistics.symmetric import SymmetricBlocks
from .tiles import symmetrise_, transposed
from .transforms import SpaceTransform, Transforms, same
from .unitmaps.spaces import Member, UnitMap

# A group whose members read no other space (embeddings, norms, biases) never changes: it is kept once
# computed, unless it has fewer features than this (its products cost less than its D x D blocks in memory).
_CACHED_FEATURES = 64
# A kept group that reads one other space is brought up to date by its changed features while they
# are at most this fraction of that space's merged units; beyond it, computed afresh.
_UPDATE_FRACTION = 0.5
_BLEND_ROWS = 512  # rows of the activation term scaled at a time by blend


def weight_similarity(
    space: str,
    unit_maps: Sequence[UnitMap],
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    transforms: Transforms,
    aligned: Collection[str] | None = None,
) -> np.ndarray:
    """One fresh :class:`WeightSimilarity` computation (every block, nothing cached)."""
    return WeightSimilarity(unit_maps, state_dicts)(space, transforms, aligned)


@dataclass
class _Sums:
    """A group's share of a space's weight statistics: Gram blocks over its standardised features
    (``gram``), only some of their entries (``picked``: one vector per requested index set), or the
    standardised features themselves (``factors``, units x features: a group of a few features,
    whose products are added where the blocks are summed); the per-unit sums and sums of squares,
    and the feature count."""

    gram: dict[tuple[int, int], torch.Tensor] | None
    picked: list[torch.Tensor] | None
    sums: torch.Tensor
    squares: torch.Tensor
    features: int
    factors: list[torch.Tensor] | None = None


@dataclass
class _Kept:
    """A kept group's share and the transform of the one space it reads (``frame``: None when it
    reads none) under which it is up to date. Between the calls that read it, its blocks wait in the
    similarity's spill (``part.gram`` None; :meth:`WeightSimilarity._stow`)."""

    part: _Sums
    frame: SpaceTransform | None


Picks = Sequence[tuple[tuple[int, int], torch.Tensor, torch.Tensor]]  # (block, local rows, local cols)


class WeightSimilarity:
    """Weight similarity S_w of merge spaces under changing transforms.

    A unit's weight vector concatenates its slice of every member of the space (its row where the
    tensor writes the space, its column where it reads it); each tensor's *other* axes are first
    brought into the merged frame by the current transforms (model i alone, averaged within the
    model), so that units of different models are compared in one frame. Every feature is
    standardised across the units of all models first, so that a member whose values share a large
    offset (LayerNorm gammas near 1) adds its deviations, not a constant that would make every pair
    of units look alike. S_w is the Pearson correlation of these vectors. Task heads are left out:
    their label axes mean different things in different tasks.

    Members are grouped by the other spaces their tensors lie in (:meth:`dependencies`). A group
    that reads no other space never changes and is computed once. A group of matrices that read one
    other space is kept too, with that space's transform: each of its features is one merged unit of
    that space (standardised on its own), so when the transform changes, only the features of the
    merged units whose members changed are subtracted (as they were) and added (as they are now),
    while they are at most :data:`_UPDATE_FRACTION` of them (a descent's later sweeps move a few
    percent of a space's units). The kept D x D blocks (about 2 GB float32 at BERT-base) wait in an
    unlinked temporary file between the calls that read them (:class:`~hf_mudsc.spill.Spill`), so that
    a call holds only its own space's. :meth:`entries` reads kept groups (brought up to date the same way) and
    computes only the entries a score reads for the others, from the features directly.

    ``within=False``: only the cross-model blocks (and every unit's variance) are computed; the
    within-model off-diagonal entries are 0. Use it only for solvers that never read them
    (permute mode; zip of two models with no same-model budget).
    All products run in float32 on the device of model 0's first tensor (each model's tensors are
    brought there); standardised features are O(1), so sums are accurate to ~1e-6.
    """

    def __init__(self, unit_maps: Sequence[UnitMap], state_dicts: Sequence[Mapping[str, torch.Tensor]],
                 within: bool = True) -> None:
        self.unit_maps = list(unit_maps)
        self.state_dicts = list(state_dicts)
        self.device = next(iter(state_dicts[0].values())).device
        n = len(unit_maps)
        self.pairs = [(i, j) for i, j in combinations_with_replacement(range(n), 2) if within or i != j]
        self.within = within
        self._cache: dict[tuple[str, tuple[str, ...]], _Kept] = {}
        self._spill = Spill()  # the kept groups' blocks between the calls that read them
        self._written: set[tuple[str, tuple[str, ...]]] = set()  # kept groups whose blocks the spill holds as they are

    def __call__(self, space: str, transforms: Transforms, aligned: Collection[str] | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """S_w of ``space`` (float64) under ``transforms``. ``aligned``: when given, only members whose
        other axes all lie in these spaces (or in no space) count, so that nothing is compared across
        models in frames not yet aligned. ``out``: a C-contiguous float64 matrix of the space's side to
        write it into (and return) instead of a new one."""
        sizes = [m[space].dim for m in self.unit_maps]
        with self._stowing():
            return self._correlation(self._parts(space, transforms, aligned), sizes, out)

    def entries(self, space: str, transforms: Transforms, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``S_w[rows, cols]`` of ``space`` under ``transforms`` (every member counts), equal to the
        same entries of :meth:`__call__` to ~1e-6 (float32 sums in another order), without building
        the whole matrix: what scoring a solution needs (the pairs inside its merged units)."""
        sizes = [m[space].dim for m in self.unit_maps]
        rows, cols = np.broadcast_arrays(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))
        r, c = (torch.from_numpy(x.reshape(-1).copy()).to(self.device) for x in (rows, cols))
        offsets = [int(o) for o in np.cumsum([0, *sizes])]
        model_r, model_c = (torch.searchsorted(torch.tensor(offsets, device=self.device), x, right=True) - 1
                            for x in (r, c))
        picks, where = [], []
        for i, j in self.pairs:  # every off-diagonal entry, as (block, local row, local col) of an upper block
            for ri, ci, flip in ((model_r, model_c, False), (model_c, model_r, True)):
                sel = ((ri == i) & (ci == j) & (r != c)).nonzero().squeeze(1)
                if (flip and i == j) or not sel.numel():
                    continue
                first, second = (c[sel], r[sel]) if flip else (r[sel], c[sel])
                picks.append(((i, j), first - offsets[i], second - offsets[j]))
                where.append(sel)
        with self._stowing():
            parts = self._parts(space, transforms, None, picks)
            features = sum(p.features for p in parts)
            if features == 0:
                return (rows == cols).astype(np.float64)
            mean, inv = _moments(parts, features)
            out = torch.zeros(r.numel(), dtype=torch.float64, device=self.device)
            for k, (((i, j), lr, lc), sel) in enumerate(zip(picks, where)):
                gram = sum(p.picked[k] if p.gram is None else p.gram[i, j][lr, lc] for p in parts)
                a, b = lr + offsets[i], lc + offsets[j]
                out[sel] = gram.to(torch.float64).div_(features).sub_(mean[a] * mean[b]).mul_(inv[a]).mul_(inv[b]) \
                    .clamp_(-1.0, 1.0)
        diagonal = (r == c).nonzero().squeeze(1)
        out[diagonal] = (inv[r[diagonal]] > 0).to(torch.float64)
        return out.reshape(rows.shape).cpu().numpy()

    def _parts(self, space: str, transforms: Transforms, aligned: Collection[str] | None,
               picks: Picks | None = None) -> list[_Sums]:
        """Every counted group's share of ``space`` under ``transforms``: whole Gram blocks, or with
        ``picks`` only those entries (a kept group always gives its whole blocks)."""
        sizes = [m[space].dim for m in self.unit_maps]
        parts = []
        for deps, members in self._groups(space).items():
            if aligned is not None and not set(deps) <= set(aligned):
                continue
            parts.append(self._part(space, deps, members, sizes, transforms, picks))
        return parts

    def _part(self, space: str, deps: tuple[str, ...], members: list[Member], sizes: list[int],
              transforms: Transforms, picks: Picks | None) -> _Sums:
        """One group's share: kept (and brought up to date by its changed features), or computed."""
        key = (space, deps)
        if not deps:
            if key not in self._cache:
                if sum(self._features(m) for m in members) < _CACHED_FEATURES:
                    return self._compute(members, sizes, transforms, picks, factors=True)
                self._cache[key] = _Kept(self._compute(members, sizes, transforms), None)
            return self._loaded(key)
        if len(deps) > 1 or any(self.state_dicts[0][m.param].dim() != 2 for m in members):
            return self._compute(members, sizes, transforms, picks)  # features are not one per merged unit
        frame = transforms.get(deps[0])
        kept = self._cache.get(key)
        if kept is not None and same(kept.frame, frame):
            return self._loaded(key)
        if kept is not None and kept.frame is not None and frame is not None:
            removed, added = _changed_units(kept.frame, frame)
            if len(removed) + len(added) <= _UPDATE_FRACTION * frame.k:
                part = self._loaded(key, changing=True)
                self._add(part, members, sizes, {deps[0]: kept.frame}, columns=removed, sign=-1.0)
                self._add(part, members, sizes, {deps[0]: frame}, columns=added)
                kept.frame = frame
                return part
        if picks is not None:  # a few entries cost less than whole blocks: the kept ones stay as they are
            return self._compute(members, sizes, transforms, picks)
        self._written.discard(key)  # computed afresh below: a copy in the spill is out of date
        if kept is None or kept.part.gram is None:  # new, or in the spill (read back, its blocks would be new too)
            kept = self._cache[key] = _Kept(self._compute(members, sizes, transforms), frame)
            return kept.part
        part = kept.part  # held (a device's): afresh, in place, since new blocks of this size cost about as
        for tensor in (*part.gram.values(), part.sums, part.squares):  # much as the products, in page faults
            tensor.zero_()
        part.features, kept.frame = 0, frame
        self._add(part, members, sizes, transforms)
        return part

    def _loaded(self, key: tuple[str, tuple[str, ...]], changing: bool = False) -> _Sums:
        """A kept group's share with its blocks in memory (read back from the spill where :meth:`_stow`
        wrote them); ``changing``: the caller changes them, so that the spill's copy is out of date."""
        part = self._cache[key].part
        if part.gram is None:
            part.gram = {pair: self._spill.get((key, pair)) for pair in self.pairs}
        if changing:
            self._written.discard(key)
        return part

    @contextmanager
    def _stowing(self) -> Iterator[None]:
        """Run the body, then :meth:`_stow` (also when it fails)."""
        try:
            yield
        finally:
            self._stow()

    def _stow(self) -> None:
        """Write every kept group's blocks to the spill (those changed since last written) and let go of
        them, so that between the calls that read them they wait out of memory (about 2 GB float32 at
        BERT-base); where the spill cannot take them (a device's tensors, a full disk), they stay."""
        for key, kept in self._cache.items():
            gram = kept.part.gram
            if gram is None:
                continue
            if key not in self._written:
                if not all([self._spill.put((key, pair), block) for pair, block in gram.items()]):
                    continue
                self._written.add(key)
            kept.part.gram = None

    def dependencies(self, space: str) -> set[str]:
        """The spaces whose transforms S_w of ``space`` depends on (the other axes of its members)."""
        return {d for deps in self._groups(space) for d in deps}

    def _groups(self, space: str) -> dict[tuple[str, ...], list[Member]]:
        """The space's members (task heads left out), by the other spaces their tensors lie in."""
        umap = self.unit_maps[0]
        groups: dict[tuple[str, ...], list[Member]] = {}
        for member in umap[space].members:
            if member.param in umap.task_heads or any(member.param not in sd for sd in self.state_dicts):
                continue  # a head, or a layer that another model lacks (a deeper parent's layer without a partner)
            deps = tuple(sorted({o.name for o, m in umap.param_members()[member.param] if m.axis != member.axis}))
            groups.setdefault(deps, []).append(member)
        return groups

    def _compute(self, members: list[Member], sizes: list[int], transforms: Transforms,
                 picks: Picks | None = None, factors: bool = False) -> _Sums:
        """The group's share: its Gram blocks, (``picks``) only the entries asked for, or
        (``factors``, without ``picks``) its standardised features."""
        low_rank = factors and picks is None
        gram = None if picks is not None or low_rank else {
            (i, j): torch.zeros(sizes[i], sizes[j], dtype=torch.float32, device=self.device) for i, j in self.pairs}
        picked = None if picks is None else [torch.zeros(len(lr), dtype=torch.float32, device=self.device)
                                             for _, lr, _ in picks]
        dim = sum(sizes)
        part = _Sums(gram, picked, torch.zeros(dim, dtype=torch.float64, device=self.device),
                     torch.zeros(dim, dtype=torch.float64, device=self.device), 0, [] if low_rank else None)
        self._add(part, members, sizes, transforms, picks)
        return part

    def _add(self, part: _Sums, members: list[Member], sizes: list[int], transforms: Transforms,
             picks: Picks | None = None, columns: torch.Tensor | None = None, sign: float = 1.0) -> None:
        """Add (``sign`` 1) or subtract (-1) the members' features to ``part``: all of them, or
        (``columns``, matrices reading one space) those of these merged units of that space."""
        offsets = np.cumsum([0, *sizes])
        cut = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        if columns is not None and not len(columns):
            return
        for member in members:
            rows = [self._unit_rows(member.param, member.axis, i, transforms) for i in range(len(sizes))]
            if len({r.shape[1] for r in rows}) != 1:
                continue  # other axes of different sizes (width heterogeneity outside the merged frame)
            if columns is not None:
                rows = [r[:, columns.to(r.device)] for r in rows]
            z = _standardise(torch.cat(rows))
            if part.gram is not None:
                for (i, j), block in part.gram.items():
                    block.addmm_(z[cut[i]], z[cut[j]].T, alpha=sign)
            elif part.factors is not None:
                part.factors.append(z.to(torch.float64))
            else:
                for total, ((i, j), lr, lc) in zip(part.picked, picks):
                    total.add_((z[cut[i]][lr] * z[cut[j]][lc]).sum(dim=1), alpha=sign)
            # float32 reductions added into float64 totals: a float64 reduction of float32 rows converts
            # element by element, 40-80x slower than these vectorised passes (rounding ~1e-7 of sum |z|)
            part.sums.add_(z.sum(dim=1), alpha=sign)
            part.squares.add_(torch.linalg.vector_norm(z, dim=1).square_(), alpha=sign)
            part.features += int(sign) * z.shape[1]

    def _features(self, member: Member) -> int:
        """How many features a member gives each unit (its tensor's size over the unit axis)."""
        tensor = self.state_dicts[0][member.param]
        return tensor.numel() // tensor.shape[member.axis]

    def _unit_rows(self, param: str, axis: int, i: int, transforms: Transforms) -> torch.Tensor:
        """Model i's tensor (float32, on this object's device) with its other axes in the merged
        frame, as (units, features)."""
        umap = self.unit_maps[i]
        x = self.state_dicts[i][param].detach().to(device=self.device, dtype=torch.float32)
        for other, member in umap.param_members()[param]:
            if member.axis != axis and other.name in transforms:
                x = transforms[other.name].project(x, i, member.axis)
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)

    def _correlation(self, parts: list[_Sums], sizes: list[int], out: np.ndarray | None = None) -> np.ndarray:
        dim = sum(sizes)
        if out is not None and (out.shape != (dim, dim) or out.dtype != np.float64 or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous float64 {dim} x {dim} matrix")
        in_place = out is not None and self.device.type == "cpu"  # else computed on the device, copied into out
        corr = torch.from_numpy(out) if in_place else torch.empty(dim, dim, dtype=torch.float64, device=self.device)

        def result() -> np.ndarray:
            if out is None:
                return corr.cpu().numpy()
            if not in_place:
                np.copyto(out, corr.cpu().numpy())
            return out

        features = sum(p.features for p in parts)
        if features == 0:
            # no member counted: in the data-free start a space none of whose members is aligned yet (or,
            # for parents of different widths, none in one frame yet); the identity carries no evidence
            # (each unit most like itself), and the sweeps that follow see every member
            corr.zero_().diagonal().fill_(1.0)
            return result()
        mean, inv = _moments(parts, features)
        centre = mean * inv  # (G / F - m m^T) * inv inv^T = G * (inv / F) inv^T - (m inv)(m inv)^T
        offsets = np.cumsum([0, *sizes])
        cut = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        for i in range(len(sizes)):
            if (i, i) not in self.pairs:  # within=False: the within-model blocks are 0 (diagonal below)
                corr[cut[i], cut[i]].zero_()
        for i, j in self.pairs:  # every block is computed in its place in the matrix
            a, b = cut[i], cut[j]
            block = corr[a, b]
            grams = [p.gram[i, j] for p in parts if p.gram is not None]
            if grams:  # summed in float32 (one new block at most), then the few-feature groups' products in float64
                total = grams[0] if len(grams) == 1 else torch.add(grams[0], grams[1])
                for g in grams[2:]:
                    total.add_(g)
                block.copy_(total)
            else:
                block.zero_()
            for factor in (f for p in parts for f in p.factors or ()):
                block.addmm_(factor[a], factor[b].T)
            block.mul_((inv[a] / features).unsqueeze(1)).mul_(inv[b].unsqueeze(0))
            block.addr_(centre[a], centre[b], alpha=-1.0).clamp_(-1.0, 1.0)
            if i == j:
                symmetrise_(block)
            else:
                transposed(corr[b, a], block)
        corr.diagonal().copy_((inv > 0).to(torch.float64))
        return result()


def _changed_units(old: SpaceTransform, new: SpaceTransform) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged units of ``old`` whose members (per model) no unit of ``new`` has, and those of
    ``new`` that ``old`` lacks (a renumbering alone changes nothing), in index order."""
    before, after = _unit_members(old), _unit_members(new)
    removed = [u for key, u in before.items() if key not in after]
    added = [u for key, u in after.items() if key not in before]
    return torch.tensor(sorted(removed), dtype=torch.long), torch.tensor(sorted(added), dtype=torch.long)


def _unit_members(t: SpaceTransform) -> dict[tuple[tuple[int, ...], ...], int]:
    """Each merged unit of ``t``, keyed by its members per model."""
    per_model = []
    for i, assign in enumerate(t.assign):
        order = torch.argsort(assign, stable=True).tolist()
        counts = t.model_counts(i).tolist()
        starts = np.cumsum([0, *counts]).tolist()
        per_model.append([tuple(order[starts[u]:starts[u + 1]]) for u in range(t.k)])
    return {key: u for u, key in enumerate(zip(*per_model))}


def _moments(parts: list[_Sums], features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every unit's mean over the standardised features, and 1 / its standard deviation (0 for a
    constant unit)."""
    mean = sum(p.sums for p in parts) / features
    var = sum(p.squares for p in parts) / features - mean * mean
    std = var.clamp(min=0).sqrt()
    return mean, torch.where(std > 1e-6, 1.0 / std.clamp(min=1e-300), torch.zeros_like(std))


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance per feature (column) across units, in place; constant features -> 0."""
    std, mean = torch.std_mean(x, dim=0, unbiased=False, keepdim=True)
    inv = torch.where(std > 0, 1.0 / std.clamp(min=1e-30), 0.0)
    return x.sub_(mean).mul_(inv)


def blend(alpha: float, weight: np.ndarray | None, activation: np.ndarray | SymmetricBlocks | None,
          overwrite: bool = False) -> np.ndarray | SymmetricBlocks:
    """``alpha * S_w + (1 - alpha) * S_act`` (``activation``: a matrix, or a merger's kept correlations,
    read by rows; returned as it is when ``alpha`` is 0). A term with weight 0 may be missing; a term that
    ``alpha`` weighs must be there (the merger collects statistics for every space it solves).
    ``overwrite``: the result may be written into ``weight`` (a matrix the caller no longer needs:
    a new one of that size costs about as much as the arithmetic, in page faults)."""
    if alpha > 0.0 and weight is None:
        raise ValueError(f"alpha={alpha} weighs the weight similarity, but none was given for this space")
    if alpha < 1.0 and activation is None:
        raise ValueError(f"alpha={alpha} weighs the activation similarity, but this space has no statistics: "
                         "give calibration data, or use alpha = 1")
    if alpha >= 1.0:
        return weight  # type: ignore[return-value]
    if alpha <= 0.0:
        return activation  # type: ignore[return-value]
    out = np.multiply(weight, alpha, out=weight if overwrite else None)
    for i in range(0, len(out), _BLEND_ROWS):  # by rows: no temporary the size of the matrix
        out[i:i + _BLEND_ROWS] += np.multiply(activation[i:i + _BLEND_ROWS], 1.0 - alpha)
    return out

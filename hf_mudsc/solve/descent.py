"""Coordinate descent over merge spaces (DESIGN §3.4).

The weight similarity of a space depends on the transforms of its neighbours, so spaces
are solved in turn: start from the activation-only solution (identity when alpha = 1),
sweep the solve units in a seeded random order, re-solve each on the blended similarity
with its neighbours' current transforms. The start and every sweep are scored by the mean
objective of one consistent set of transforms (every space's blended similarity under the
transforms the sweep ended with); the best of them is kept (the start included; a sweep replaces
it when it gains more than :data:`MIN_GAIN` of its score). Stop after ``patience`` sweeps in a row
that each gain less than the relative ``tol`` (``MergeConfig.tol``), or after ``max_sweeps``.
A *solve unit* is one space, or the QK and VO spaces of one head group solved together.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Protocol, Sequence

import numpy as np

from ..config import MergeConfig
from ..similarity import blend
from ..statistics.symmetric import SymmetricBlocks
from ..transforms import SpaceTransform, Transforms, same
from ..unitmaps.spaces import MergeSpace
from .assignment import solve_permute
from .heads import solve_heads
from .solution import MergedPairs, Solution
from .zip import solve_zip

# A sweep's transforms replace the best ones when their score beats the best by this fraction of it:
# smaller differences are of the order of the scores' float32 rounding, and must not decide a merge.
MIN_GAIN = 1e-4


class WeightSim(Protocol):
    """S_w of a space under given transforms (:class:`~hf_mudsc.similarity.WeightSimilarity`)."""

    def __call__(self, space: str, transforms: Transforms, aligned: Collection[str] | None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """The whole matrix (written into ``out`` when given, else a new one: the descent overwrites
        it), counting only members whose other axes lie in ``aligned`` (when given)."""

    def entries(self, space: str, transforms: Transforms, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``S_w[rows, cols]`` with every member counted, equal to those of the whole matrix (to ~1e-6)."""

    def dependencies(self, space: str) -> set[str]:
        """The spaces whose transforms S_w of ``space`` depends on."""


@dataclass(frozen=True)
class SolveSettings:
    """Solver knobs, taken from a :class:`~hf_mudsc.config.MergeConfig` (:meth:`from_config`)."""

    mode: str
    alpha: float
    zip_budget: float
    zip_decay: float
    max_sweeps: int
    patience: int
    tol: float
    seed: int

    @classmethod
    def from_config(cls, config: MergeConfig) -> SolveSettings:
        return cls(config.resolved_mode, config.resolved_alpha, config.resolved_zip_budget, config.resolved_zip_decay,
                   config.max_sweeps, config.patience, config.tol, config.seed)

    def reads_within(self, num_models: int) -> bool:
        """Whether a solve may read within-model similarities: zip with a same-model budget, or of
        more than two models (which merge units of one model when k leaves no partition within the
        budgets); two models with no budget always pair one unit of each."""
        return self.mode == "zip" and (self.zip_budget > 0 or num_models > 2)


@dataclass
class DescentResult:
    """Transforms of every solved space; per space the blended objective and, when weights were
    used, the weight-similarity objective, both of these transforms; the score of the start and of
    every weight sweep (``history``)."""

    transforms: Transforms
    objectives: dict[str, float]
    weight_objectives: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)


def solve_units(spaces: Sequence[MergeSpace]) -> list[tuple[MergeSpace, ...]]:
    """Group spaces into solve units: head groups together, other spaces alone (map order)."""
    units: list[list[MergeSpace]] = []
    where: dict[str, int] = {}
    for s in spaces:
        if s.group is not None and s.group in where:
            units[where[s.group]].append(s)
            continue
        if s.group is not None:
            where[s.group] = len(units)
        units.append([s])
    return [tuple(u) for u in units]


class Scratch:
    """Float64 square matrices that the solve units of one descent reuse, by slot (a position in a
    unit, or the solver's work matrix): each allocated once, for the widest space so far, since a new
    6144^2 matrix costs several times its arithmetic in page faults. A slot's matrix is valid until the
    slot is asked for again."""

    def __init__(self) -> None:
        self._flat: dict[object, np.ndarray] = {}

    def matrix(self, slot: object, side: int) -> np.ndarray:
        flat = self._flat.get(slot)
        if flat is None or flat.size < side * side:
            flat = self._flat[slot] = np.empty(side * side)
        return flat[:side * side].reshape(side, side)


def solve_unit(unit: tuple[MergeSpace, ...], sims: Sequence[np.ndarray], sizes: Sequence[Sequence[int]],
               settings: SolveSettings, scratch: Scratch | None = None) -> list[Solution]:
    """Solve one unit on its similarity matrices (one per space); ``sizes[j]`` per model; ``scratch``:
    where the zip solver takes its work matrix (slot ``"work"``) instead of a new one."""
    if unit[0].heads is not None:
        heads = unit[0].heads
        counts = [d // heads.head_dim for d in sizes[0]]
        return solve_heads(sims, sizes[0], counts, heads.head_dim, settings.mode,
                           settings.zip_budget, settings.zip_decay)
    (sim,) = sims
    if settings.mode == "permute":
        return [solve_permute(sim, sizes[0])]
    # every matrix here is exactly symmetric: S_act, S_w (built so) and their blend, entry by entry
    work = None if scratch is None else scratch.matrix("work", len(sim))
    return [solve_zip(sim, sizes[0], budget=settings.zip_budget, decay=settings.zip_decay, symmetric=True,
                      work=work)]


def coordinate_descent(
    units: Sequence[tuple[MergeSpace, ...]],
    sizes: Mapping[str, Sequence[int]],
    settings: SolveSettings,
    activation: Mapping[str, np.ndarray | SymmetricBlocks] | None,
    weight_sim: WeightSim | None,
    start: Transforms,
    progress: Callable[[str], None] | None = None,
) -> DescentResult:
    """Run the descent. ``activation``: S_act per space (None when alpha = 1); ``weight_sim``:
    S_w of a space under given transforms, counting only members whose other axes lie in the
    given aligned spaces when these are given (None when alpha = 0); ``start``: transforms of
    every space (the neighbours' frame before a space is first solved).

    Without activations the start is built in map order (the residual stream first, from its
    embeddings, norms and biases), each space from the members whose other axes are already
    aligned: starting from the identity everywhere, the layers would align to the unaligned
    residual stream and the descent would stay there.
    """
    transforms = dict(start)
    alpha = settings.alpha
    inputs: dict[str, dict[str, SpaceTransform | None]] = {}  # per unit: its neighbours at its last weight solve
    scratch = Scratch()  # every unit's matrices: S_w and the blend written into it, the solver's work matrix

    def similarity(position: int, space: MergeSpace, use_weights: bool, aligned: set[str] | None) -> np.ndarray:
        """The matrix a unit's ``position``-th space is solved on, in that slot's scratch matrix."""
        out = scratch.matrix(position, sum(sizes[space.name]))
        weights = use_weights and weight_sim is not None
        weight = weight_sim(space.name, transforms, aligned, out=out) if weights else None
        act = activation.get(space.name) if activation is not None else None
        sim = blend(alpha if use_weights else 0.0, weight, act, overwrite=True)  # S_w becomes the blend
        sim = sim.copy_to(out) if isinstance(sim, SymmetricBlocks) else sim  # alpha 0: S_act made whole
        _let_go(act)
        return sim

    def sweep(order: Sequence[tuple[MergeSpace, ...]], use_weights: bool,
              aligned: set[str] | None = None) -> dict[str, float]:
        objectives: dict[str, float] = {}
        for unit in order:
            key = unit[0].name
            if use_weights and aligned is None and weight_sim is not None:
                now = {d: transforms.get(d) for s in unit for d in weight_sim.dependencies(s.name)}
                if key in inputs and all(same(t, inputs[key][d]) for d, t in now.items()):
                    if progress is not None:  # the same similarities as at its last solve: the same solution
                        progress(unit[0].group or unit[0].name)
                    continue
                inputs[key] = now
            sims = [similarity(j, s, use_weights, aligned) for j, s in enumerate(unit)]
            for s, sol in zip(unit, solve_unit(unit, sims, [sizes[s.name] for s in unit], settings, scratch)):
                transforms[s.name] = SpaceTransform(tuple(sol.assign), sol.k)
                objectives[s.name] = sol.objective
                if aligned is not None:
                    aligned.add(s.name)
            if progress is not None:
                progress(unit[0].group or unit[0].name)
        return objectives

    if alpha < 1.0 and activation is not None:  # the activation-only solution
        objectives = sweep(units, use_weights=False)
        if alpha == 0.0 or weight_sim is None:
            return DescentResult(transforms, objectives, history=[_mean(objectives)])
    else:  # data-free: align the spaces in map order, each from the members already in one frame
        sweep(units, use_weights=True, aligned=set())
    names = [s.name for unit in units for s in unit]
    best = _scored(names, transforms, alpha, activation, weight_sim)
    best.history.append(_mean(best.objectives))
    stale = 0
    rng = random.Random(settings.seed)
    for _ in range(settings.max_sweeps):
        order = list(units)
        rng.shuffle(order)
        if not sweep(order, use_weights=True):
            break  # no unit's neighbours changed since its last solve: a fixed point
        current = _scored(names, transforms, alpha, activation, weight_sim)
        score = _mean(current.objectives)
        best.history.append(score)
        best_score = _mean(best.objectives)
        if score - best_score > MIN_GAIN * abs(best_score):
            best.transforms, best.objectives, best.weight_objectives = (
                current.transforms, current.objectives, current.weight_objectives)
        if score - best_score > settings.tol * abs(best_score):
            stale = 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    return best


def _scored(names: Sequence[str], transforms: Transforms, alpha: float,
            activation: Mapping[str, np.ndarray | SymmetricBlocks] | None,
            weight_sim: WeightSim) -> DescentResult:
    """The objectives of every space under one set of transforms (a copy of them), read from the
    entries inside the merged units only."""
    objectives, weights = {}, {}
    for name in names:
        pairs = MergedPairs(np.concatenate([a.numpy() for a in transforms[name].assign]))
        w = weight_sim.entries(name, transforms, pairs.rows, pairs.cols)
        a = activation.get(name) if activation is not None else None
        weights[name] = pairs.mean(w)
        objectives[name] = pairs.mean(blend(alpha, w, None if a is None else a[pairs.rows, pairs.cols]))
        _let_go(a)
    return DescentResult(dict(transforms), objectives, weights)


def _let_go(activation: np.ndarray | SymmetricBlocks | None) -> None:
    """Map a space's kept correlations out of the process once read (on disk: :meth:`SymmetricBlocks.release`),
    so that a solve holds one space's at a time, not every space's it has read."""
    if isinstance(activation, SymmetricBlocks):
        activation.release()


def _mean(values: Mapping[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else 0.0

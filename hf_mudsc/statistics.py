"""Streamed activation statistics of merge spaces (DESIGN.md §3.2).

Every parent sees the same batch; forward hooks at each space's sites take the features of
the samples that count (real tokens, or rows), and for every space the features of all parents
are concatenated along the unit axis (model 0's units first) and added to a :class:`Moments`.
Nothing but the float64 accumulators outlives a batch.
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from accelerate.utils import broadcast
from torch import Tensor, nn
from tqdm.auto import tqdm

from hf_mudsc.quality import MergeQualityWarning  # noqa: F401  (re-exported)
from hf_mudsc.unitmaps.spaces import Site, UnitMap

__all__ = [
    "MergeQualityWarning",
    "Moments",
    "calibration_issues",
    "collect_statistics",
    "model_slices",
    "plan_space_groups",
    "reduce_moments",
]

# A unit whose standard deviation is below this fraction of |mean| is float64 rounding noise
# around a constant: it is treated as constant (correlation 0 with everything).
_CONSTANT_RTOL = 1e-12
_BYTES_PER_UNIT_SQUARED = 8  # one float64 entry of the D x D accumulator


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


# --------------------------------------------------------------------------- diagnostics


def calibration_issues(samples: Mapping[str, int], unit_maps: Sequence[UnitMap],
                       corr: Mapping[str, Tensor]) -> dict[str, list[dict[str, Any]]]:
    """What in the collected statistics may make a merge poor, per kind of issue:

    - ``few_samples``: spaces with fewer samples than units (of the widest parent): the
      activation correlations are then rank-deficient, so the matching is poorly determined;
      ``{"space", "samples", "units"}``;
    - ``constant``: spaces with units whose activation is constant on the calibration data
      (dead units, zeroed layers, a single example): their activation similarity is 0;
      ``{"space", "constant": [count per model], "units": [units per model]}``.

    ``samples``: the samples per space; ``corr``: the correlations (:meth:`Moments.corr`, whose
    diagonal is 0 exactly for constant units).
    """
    few, constant = [], []
    for name, n in samples.items():
        units = [um[name].dim for um in unit_maps]
        if n < max(units):
            few.append({"space": name, "samples": n, "units": max(units)})
        if n == 0:
            continue
        diag = corr[name].diagonal().cpu()
        dead = [int((diag[sl] == 0).sum()) for sl in model_slices(unit_maps, name)]
        if any(dead):
            constant.append({"space": name, "constant": dead, "units": units})
    return {"few_samples": few, "constant": constant}


# --------------------------------------------------------------------------- planning


def model_slices(unit_maps: Sequence[UnitMap], space: str) -> list[slice]:
    """Where model i's units of ``space`` sit in the concatenated feature vector."""
    out, start = [], 0
    for um in unit_maps:
        dim = um[space].dim
        out.append(slice(start, start + dim))
        start += dim
    return out


def plan_space_groups(unit_maps: Sequence[UnitMap], memory_budget_bytes: int) -> list[list[str]]:
    """Group the observed spaces (those with sites) so that each pass's float64 D x D
    accumulators fit the budget.

    First-fit decreasing; within a group the spaces keep the unit-map order. Only the
    accumulators are counted, not one batch's activations. Raises ``ValueError`` if one
    space alone does not fit.
    """
    names = _space_names(unit_maps, None)
    cost = {n: _BYTES_PER_UNIT_SQUARED * sum(um[n].dim for um in unit_maps) ** 2 for n in names}
    groups: list[list[str]] = []
    loads: list[int] = []
    for name in sorted(names, key=lambda n: -cost[n]):
        if cost[name] > memory_budget_bytes:
            raise ValueError(
                f"space '{name}' alone needs {cost[name]} bytes of accumulators, over the budget of {memory_budget_bytes}"
            )
        slot = next((g for g, load in enumerate(loads) if load + cost[name] <= memory_budget_bytes), None)
        if slot is None:
            groups.append([])
            loads.append(0)
            slot = len(groups) - 1
        groups[slot].append(name)
        loads[slot] += cost[name]
    order = {n: i for i, n in enumerate(names)}
    return [sorted(g, key=order.__getitem__) for g in groups]


def _space_names(unit_maps: Sequence[UnitMap], spaces: Iterable[str] | None) -> list[str]:
    """The requested space names (by default model 0's spaces that have sites), checked against every map."""
    if not unit_maps:
        raise ValueError("no unit maps given")
    names = [s.name for s in unit_maps[0].spaces if s.sites] if spaces is None else list(spaces)
    for i, um in enumerate(unit_maps):
        missing = [n for n in names if n not in um]
        if missing:
            raise ValueError(f"unit map {i} ('{um.family}') has no space(s) {missing}")
    for n in names:
        counts = {len(um[n].sites) for um in unit_maps}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"space '{n}' must have the same non-zero number of sites in every unit map, got {sorted(counts)}")
    return names


# --------------------------------------------------------------------------- collection


@dataclass(frozen=True)
class _Route:
    """One site of one space in one model: where a hook sends its features."""

    space: str
    site_index: int
    site: Site
    model: int
    dim: int

    @property
    def key(self) -> tuple[str, int]:
        return self.space, self.site_index

    def describe(self) -> str:
        return f"space '{self.space}', model {self.model}, {self.site.kind} of '{self.site.module}'"


@dataclass
class _BatchState:
    """What one batch's hooks share: the mask, the sample subsets, the pending features."""

    mask: Tensor | None
    num_models: int
    selections: dict[tuple[str, int, int], tuple[torch.Size, Tensor]] = field(default_factory=dict)
    pending: dict[tuple[str, int], list[deque[Tensor]]] = field(default_factory=dict)
    fired: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def firing(self, route: _Route) -> int:
        """Count this call of the route's site and return its index within the batch."""
        counts = self.fired.setdefault(route.key, [0] * self.num_models)
        counts[route.model] += 1
        return counts[route.model] - 1


class _Collector:
    """Owns the hooks and the moments of one :func:`collect_statistics` call."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        unit_maps: Sequence[UnitMap],
        names: Sequence[str],
        max_tokens_per_batch: int | None,
        seed: int,
        stats_device: torch.device,
    ) -> None:
        self.models = models
        self.cap = max_tokens_per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.stats_device = stats_device
        self.routes = [
            _Route(n, j, site, i, um[n].dim)
            for i, um in enumerate(unit_maps)
            for n in names
            for j, site in enumerate(um[n].sites)
        ]
        self.moments = {n: Moments(sum(um[n].dim for um in unit_maps), stats_device) for n in names}
        self.keys = sorted({r.key for r in self.routes})
        self.batch = _BatchState(None, len(models))

    def register(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Register one forward hook per route; the caller removes them."""
        handles = []
        try:
            for r in self.routes:
                module = _find_module(self.models[r.model], r)
                handles.append(module.register_forward_hook(self._hook(r), with_kwargs=True))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        return handles

    def run(self, batch: Mapping[str, Any]) -> None:
        """Run every model on ``batch`` and add its samples to the moments."""
        mask = batch.get("attention_mask")
        self.batch = _BatchState(None if mask is None else mask.detach().to("cpu").bool(), len(self.models))
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        for model in self.models:
            model(**_to_device(inputs, _model_device(model)))
        self._check_batch_complete()

    def _hook(self, route: _Route) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self._add(route, _site_tensor(route, args, kwargs, output))

        return hook

    def _add(self, route: _Route, tensor: Tensor) -> None:
        firing = self.batch.firing(route)
        rows = self._rows(route, firing, tensor)
        feats = tensor.detach().reshape(-1, tensor.shape[-1]).index_select(0, rows.to(tensor.device))
        feats = feats.to(self.stats_device)
        if feats.shape[1] != route.dim:
            raise ValueError(f"{route.describe()}: {feats.shape[1]} units observed, the unit map says {route.dim}")
        if not torch.isfinite(feats).all():
            raise ValueError(f"non-finite activation (NaN/inf) in {route.describe()}")
        self._push(route, feats)

    def _rows(self, route: _Route, firing: int, tensor: Tensor) -> Tensor:
        """Flat row indices of the samples that count, shared by every model."""
        shape = tensor.shape[:-1]
        key = (route.space, route.site_index, firing)
        if key not in self.batch.selections:
            self.batch.selections[key] = (shape, self._select(route, tensor))
        expected, rows = self.batch.selections[key]
        if shape != expected:
            raise ValueError(
                f"{route.describe()}: samples do not align across models (shape {tuple(shape)}, model 0 gave {tuple(expected)})"
            )
        return rows

    def _select(self, route: _Route, tensor: Tensor) -> Tensor:
        """Real-token rows (mask matched by (batch, tokens) shape), capped by a random subset."""
        want = 3 if route.site.per_token else 2
        if tensor.ndim != want:
            raise ValueError(f"{route.describe()}: expected a {want}-d tensor, got shape {tuple(tensor.shape)}")
        mask = self.batch.mask
        if route.site.per_token and mask is not None and mask.shape == tensor.shape[:2]:
            rows = mask.flatten().nonzero().squeeze(1)
        elif route.site.per_token and mask is not None and not mask.all():
            raise ValueError(
                f"{route.describe()}: tensor of shape {tuple(tensor.shape)} does not match the attention mask "
                f"{tuple(mask.shape)}, so padding tokens cannot be excluded"
            )
        else:
            rows = torch.arange(tensor.shape[:-1].numel())
        if self.cap is not None and rows.numel() > self.cap:
            pick = torch.randperm(rows.numel(), generator=self.generator)[: self.cap]
            rows = rows[pick.sort().values]
        return rows

    def _push(self, route: _Route, feats: Tensor) -> None:
        """Queue model i's features; the last model's call concatenates and accumulates."""
        queues = self.batch.pending.setdefault(route.key, [deque() for _ in self.models])
        queues[route.model].append(feats)
        if route.model != len(self.models) - 1:
            return
        if any(not q for q in queues):
            raise ValueError(f"{route.describe()}: the site ran more often than in an earlier model")
        parts = [q.popleft().to(torch.float64) for q in queues]
        self.moments[route.space].update(torch.cat(parts, dim=1))

    def _check_batch_complete(self) -> None:
        for key in self.keys:
            counts = self.batch.fired.get(key, [0] * len(self.models))
            if len(set(counts)) != 1 or counts[0] == 0:
                space, j = key
                raise ValueError(
                    f"space '{space}' site {j}: calls per model in one batch differ or are zero ({counts}); "
                    "check the unit map's module names"
                )


def collect_statistics(
    models: Sequence[nn.Module],
    unit_maps: Sequence[UnitMap],
    batches: Iterable[Mapping[str, Any]],
    *,
    spaces: Iterable[str] | None = None,
    max_tokens_per_batch: int | None = None,
    seed: int = 0,
    stats_device: torch.device | str = "cpu",
    progress: bool = True,
    accelerator: Any = None,
) -> dict[str, Moments]:
    """Stream ``batches`` through every parent and return the moments of each merge space.

    Every model sees every batch (tensors moved to the model's device; a ``labels`` entry is
    dropped). For space ``s`` the feature vector is the concatenation over models of their
    ``s`` units (see :func:`model_slices`); each site's samples are extra samples of the same
    units. ``per_token`` sites count every real token: the batch's ``attention_mask`` is used
    when its shape equals the site tensor's (batch, tokens), and a site whose shape differs
    counts all tokens only if the mask has no padding (else ``ValueError``). Samples must align
    across models; several sites of one space need the same count in every unit map.

    ``max_tokens_per_batch`` caps the samples per batch per site by a seeded random subset,
    identical across models. ``spaces`` restricts the spaces (default: every space of model 0
    that has sites; see :func:`plan_space_groups`).
    Models run in eval mode under ``torch.no_grad`` (their training flags are restored); hooks
    are removed on exit, errors included. A NaN/inf feature raises ``ValueError``.

    Multi-process contract (``accelerator`` with ``num_processes > 1``): every rank calls this
    with the same models, maps and arguments and its own shard of the data (the caller
    prepares the loader, ``even_batches=False`` is fine: ranks only communicate at the end);
    every rank returns the moments of all shards, equal to a single-process run up to rounding
    (without a token cap; with one, the subsets depend on the sharding).
    """
    if len(models) != len(unit_maps):
        raise ValueError(f"{len(models)} models but {len(unit_maps)} unit maps")
    names = _space_names(unit_maps, spaces)
    collector = _Collector(models, unit_maps, names, max_tokens_per_batch, seed, torch.device(stats_device))
    main = accelerator is None or accelerator.is_main_process
    handles = collector.register()
    try:
        with torch.no_grad(), _eval_mode(models):
            for batch in tqdm(batches, desc="activation statistics", unit="batch", disable=not (progress and main)):
                collector.run(batch)
    finally:
        for h in handles:
            h.remove()
    return reduce_moments(collector.moments, accelerator)


def reduce_moments(moments: dict[str, Moments], accelerator: Any) -> dict[str, Moments]:
    """Combine every rank's moments exactly; every rank gets the total.

    Per space: the shift of the first rank with samples is broadcast, each rank re-centres
    onto it, and ``n``, ``s1``, ``s2`` are summed with ``accelerator.reduce``. Collective:
    every rank must call it with the same space names. Without an accelerator, or with one
    process, ``moments`` is returned unchanged.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return moments
    return {name: _reduce_one(moments[name], accelerator) for name in sorted(moments)}


def _reduce_one(m: Moments, accelerator: Any) -> Moments:
    comm = accelerator.device
    counts = accelerator.gather(torch.tensor([m.n], dtype=torch.int64, device=comm))
    filled = counts.nonzero()
    if filled.numel() == 0:
        return m
    shift = broadcast(m.shift.to(comm).clone(), from_process=int(filled[0, 0]))
    local = Moments.from_dict(m.to_dict(), device=m.device).recentre(shift)
    total = {
        "n": counts.sum().cpu(),
        "shift": local.shift,
        "s1": accelerator.reduce(local.s1.to(comm), reduction="sum"),
        "s2": accelerator.reduce(local.s2.to(comm), reduction="sum"),
    }
    return Moments.from_dict(total, device=m.device)


# --------------------------------------------------------------------------- helpers


def _find_module(model: nn.Module, route: _Route) -> nn.Module:
    try:
        return model.get_submodule(route.site.module)
    except AttributeError:
        raise ValueError(f"{route.describe()}: the model has no module '{route.site.module}'") from None


def _site_tensor(route: _Route, args: tuple, kwargs: dict, output: Any) -> Tensor:
    """The observed tensor: first positional input (or ``hidden_states``), or the output's first element."""
    if route.site.kind == "input":
        value = args[0] if args else kwargs.get("hidden_states")
    elif isinstance(output, (tuple, list)):
        value = output[0]
    elif isinstance(output, Mapping):  # ModelOutput: its first non-None field
        value = next(iter(output.values()), None)
    else:
        value = output
    if not isinstance(value, Tensor):
        raise ValueError(f"{route.describe()}: no tensor observed (got {type(value).__name__})")
    return value


def _model_device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _to_device(inputs: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}


@contextmanager
def _eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """Put the models in eval mode, restoring every submodule's training flag afterwards."""
    flags = [[(mod, mod.training) for mod in model.modules()] for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for pairs in flags:
            for mod, training in pairs:
                mod.training = training

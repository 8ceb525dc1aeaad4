"""The streamed statistics pass: forward hooks at each space's sites feed the moments.

Every parent sees the same batch; forward hooks at each space's sites take the features of
the samples that count (real tokens, or rows), and for every space the features of all parents
are concatenated along the unit axis (model 0's units first) and added to a :class:`Moments`.
Nothing but the accumulators outlives a batch.
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..unitmaps.spaces import Site, UnitMap
from .distributed import reduce_moments
from .moments import Moments
from .planning import _space_names


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
            model(**to_device(inputs, model_device(model)))
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
        parts = [q.popleft() for q in queues]
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
    before_batch: Callable[[Mapping[str, Any]], None] | None = None,
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

    ``before_batch``: called with each batch before the models run on it (hooks of the caller's
    own see the same pass: :class:`~hf_mudsc.repair.recorded.ParentOutputs`).
    """
    if len(models) != len(unit_maps):
        raise ValueError(f"{len(models)} models but {len(unit_maps)} unit maps")
    names = _space_names(unit_maps, spaces)
    collector = _Collector(models, unit_maps, names, max_tokens_per_batch, seed, torch.device(stats_device))
    main = accelerator is None or accelerator.is_main_process
    handles = collector.register()
    try:
        with torch.no_grad(), eval_mode(models):
            for batch in tqdm(batches, desc="activation statistics", unit="batch", disable=not (progress and main)):
                if before_batch is not None:
                    before_batch(batch)
                collector.run(batch)
    finally:
        for h in handles:
            h.remove()
    return reduce_moments(collector.moments, accelerator)



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


def model_device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def to_device(inputs: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}


@contextmanager
def eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
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

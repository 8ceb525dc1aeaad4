"""What every repair works on: the merged weights, the parents and the calibration batches
(:class:`RepairContext`); observing module inputs and outputs on one batch, real tokens only
(:meth:`RepairContext.capture`); and hidden states cached at one layer's input and advanced layer
by layer (:class:`LayerInputs`), so that a repair in forward order runs each layer about once.

Parents of different widths and depths (DESIGN §4, §9): the task models are built with the merged
config (the widest widths), the parents' outputs reach the merged frame through their own ``M_i``,
and a map of a layer that only one parent runs (the shallower parent, expanded, holds an
:class:`~hf_mudsc.hetero.depth.IdentityLayer` there) takes its targets from the parents that run it
(:meth:`RepairContext.sources`), combined as the merge combined that map's weights
(:meth:`RepairContext.to_merged`)."""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..apply import MergedWeights, build_task_model
from ..hetero.width import merged_config
from ..spill import Spill
from ..transforms import Transforms
from ..unitmaps.spaces import UnitMap

if TYPE_CHECKING:
    from .recorded import ParentOutputs, Recorded

Site = tuple[str, str]  # (module name, "input" | "output")


class _Stop(Exception):
    """Raised by a hook once every wanted site has fired: the rest of the forward pass is not needed."""


@dataclass
class RepairContext:
    """The merge being repaired. Repairs change ``weights`` in place (shared parameters once for
    all tasks, heads per task) and keep the task models built here in step with it."""

    parents: Sequence[nn.Module]
    unit_maps: Sequence[UnitMap]
    transforms: Transforms
    weights: MergedWeights
    batches: Sequence[Mapping[str, Tensor]]
    seed: int = 0
    max_tokens_per_batch: int | None = None
    alone: Sequence[Collection[str]] | None = None  # per parent: parameters merged from it alone
    recorded: ParentOutputs | None = None  # the parents' outputs from the statistics pass, where they apply
    _models: dict[int, nn.Module] = field(default_factory=dict, init=False, repr=False)
    _aliased: set[str] = field(default_factory=set, init=False, repr=False)  # shared tensors a model holds

    def task_model(self, i: int) -> nn.Module:
        """Task ``i``'s merged model (built once, on parent ``i``'s device, in its dtype), with the
        merged config (the widest widths, the deepest depth), as :attr:`MergeResult.task_models`.
        The task models built here hold one copy of the shared parameters between them where their
        devices and dtypes agree, and the first one holds the merged weights' own tensors where they
        fit (:meth:`_own_shared`): one copy in all, which :meth:`set_linear` writes for every task at once."""
        if i not in self._models:
            parent = self.parents[i]
            device = next(parent.parameters()).device
            config = merged_config(parent.config, self.transforms, self.unit_maps[0])
            other = next((m for m in self._models.values()
                          if next(m.parameters()).device == device and m.dtype == parent.dtype), None)
            if other is not None:
                reuse = {name: p.detach() for name, p in other.named_parameters() if name in self.weights.shared}
            elif not self._aliased:  # the merged weights' own tensors, where they fit: one copy, written in place
                reuse = self._own_shared(device, parent.dtype)
                self._aliased = set(reuse)
            else:  # another device or dtype than the model that holds them
                reuse = {}
            self._models[i] = build_task_model(parent, self.weights.task_state_dict(i), config, reuse).to(device)
        return self._models[i]

    def _own_shared(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """The shared merged tensors that a task model on ``device`` in ``dtype`` can hold as they are:
        those of that device and dtype that are no parent's parameter (a float64 parent's tensor that
        no transform touches comes through the merge unchanged)."""
        theirs = {p.untyped_storage().data_ptr() for parent in self.parents for p in parent.parameters()}
        return {name: t for name, t in self.weights.shared.items()
                if t.device == device and t.dtype == dtype and t.untyped_storage().data_ptr() not in theirs}

    def shared_linears(self) -> list[str]:
        """Linear modules whose weight is shared by every task (those of merged layers)."""
        return [name for name, mod in self.task_model(0).named_modules()
                if isinstance(mod, nn.Linear) and f"{name}.weight" in self.weights.shared]

    def head_linears(self) -> list[str]:
        """Linear modules of the task heads (never merged; one per task)."""
        heads = set(self.unit_maps[0].task_heads)
        return [name for name, mod in self.task_model(0).named_modules()
                if isinstance(mod, nn.Linear) and f"{name}.weight" in heads]

    def members(self, param: str) -> list:
        """The (space, member) pairs of a parameter, from the first parent that has it (a shallower
        parent's unit map lacks the layers it does not run)."""
        return next((p for p in (um.param_members().get(param) for um in self.unit_maps) if p), [])

    def output_space(self, module: str) -> str:
        """The merge space a shared linear module writes (its weight's rows)."""
        for space, member in self.members(f"{module}.weight"):
            if member.role == "out" and member.axis == 0:
                return space.name
        raise ValueError(f"'{module}' writes no merge space")

    def sources(self, module: str) -> list[int]:
        """The parents that run ``module``: every parent, less a shallower one at a layer that it
        lacks (an identity layer of the expanded parent, which writes nothing)."""
        return [i for i, p in enumerate(self.parents) if _has_module(p, module)]

    def to_merged(self, module: str, value: Tensor, i: int, axis: int) -> Tensor:
        """Parent ``i``'s ``value`` along the output units of shared map ``module`` (``axis``), in
        the merged frame and weighted as the merge weighted that map's weights: ``M_i``, or
        ``pinv(U_i)`` (weight 1) for a map merged from parent ``i`` alone (an unpaired deep layer).
        Summed over :meth:`sources`, it is the target of the map (float64)."""
        t = self.transforms[self.output_space(module)]
        value = value.to(torch.float64)
        if self.alone is not None and f"{module}.weight" in self.alone[i]:
            return t.project(value, i, axis)
        return t.merge(value, i, axis)

    def set_linear(self, module: str, weight: Tensor, bias: Tensor | None, task: int | None = None) -> None:
        """Replace a linear map: shared (``task=None``) or task ``task``'s private one."""
        values = {f"{module}.weight": weight, **({} if bias is None else {f"{module}.bias": bias})}
        store = self.weights.shared if task is None else self.weights.private[task]
        for name, value in values.items():
            if task is not None or name not in self._aliased:  # an aliased one is written through its model below
                store[name] = value.detach().to(device=store[name].device, dtype=store[name].dtype)
        for i, model in self._models.items():
            if task is None or i == task:
                mod = model.get_submodule(module)
                with torch.no_grad():
                    mod.weight.copy_(weight)
                    if bias is not None:
                        mod.bias.copy_(bias)

    def blocks(self) -> list[str]:
        """The encoder layers' module names, in order."""
        return encoder_blocks(self.unit_maps[0])

    def observe(self, model: nn.Module, sites: Sequence[Site], b: int) -> dict[Site, Tensor]:
        """Run ``model`` on batch ``b`` (a full forward pass, stopped early) and return the sites' rows
        (see :meth:`capture`)."""
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.batches[b].items() if k != "labels"}
        return self.capture(model, sites, b, lambda: model(**inputs))

    def capture(self, model: nn.Module, sites: Sequence[Site], b: int, run: Callable[[], Any],
                stop: bool = True, inputs_at: Mapping[str, str] | None = None) -> dict[Site, Tensor]:
        """Call ``run()`` (a forward pass of ``model`` or of one of its layers, on batch ``b``) and return,
        per site, the rows that count (in the model's dtype; consumers sum them in float64): real tokens (``attention_mask``), capped at
        ``max_tokens_per_batch`` by a subset seeded by (seed, batch, module), so that every model
        observing one module on one batch gets the same rows. With ``stop``, the pass stops once every
        site has fired; without, it runs to its end. ``inputs_at``: module -> a module whose input is
        the same tensor (q, k and v read one), where its input is taken, so that a pass stops before
        the first of them runs."""
        mask = self.batches[b].get("attention_mask")
        wanted = set(sites)
        seen: dict[Site, Tensor] = {}

        def record(here: list[Site], args: tuple, kwargs: dict, output: Any = None) -> None:
            for module_name, kind in here:
                if (module_name, kind) in seen:
                    continue
                value = (args[0] if args else kwargs["hidden_states"]) if kind == "input" else output
                value = value[0] if isinstance(value, (tuple, list)) else value
                seen[(module_name, kind)] = sampled_rows(value.detach(), mask, b, module_name, self.seed,
                                                         self.max_tokens_per_batch)
            if stop and wanted <= set(seen):
                raise _Stop

        hooked: dict[str, list[Site]] = {}  # the module whose hook records -> the sites it records
        for module, kind in sites:
            at = (inputs_at or {}).get(module, module) if kind == "input" else module
            hooked.setdefault(at, []).append((module, kind))
        handles = []
        for name, here in hooked.items():
            module = model.get_submodule(name)
            if all(kind == "input" for _, kind in here):  # before the module runs: a pass stopping there skips it
                handles.append(module.register_forward_pre_hook(
                    lambda mod, args, kwargs, here=here: record(here, args, kwargs), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(
                    lambda mod, args, kwargs, out, here=here: record(here, args, kwargs, out), with_kwargs=True))
        try:
            with torch.no_grad():
                run()
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = wanted - set(seen)
        if missing:
            raise ValueError(f"modules {sorted(m for m, _ in missing)} did not run in the forward pass")
        return seen

    def forward_groups(self, model: nn.Module, modules: Sequence[str]) -> list[list[str]]:
        """``modules`` in the order a forward pass calls them (on the first example), in groups that
        read the same input tensor (q, k, v): a group can be re-solved from one pass, since no member
        feeds another."""
        order: list[tuple[str, Tensor]] = []  # the inputs stay referenced, so identity compares safely
        handles = []
        for name in modules:
            def fire(module: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name) -> None:
                if name not in [n for n, _ in order]:
                    order.append((name, args[0] if args else kwargs["hidden_states"]))
            handles.append(model.get_submodule(name).register_forward_hook(fire, with_kwargs=True))
        device = next(model.parameters()).device
        try:
            with torch.no_grad():  # the first example alone: the order does not depend on the batch
                model(**{k: v[:1].to(device) for k, v in self.batches[0].items() if k != "labels"})
        finally:
            for h in handles:
                h.remove()
        missing = set(modules) - {n for n, _ in order}
        if missing:
            raise ValueError(f"modules {sorted(missing)} did not run in the forward pass")
        groups: list[list[str]] = []
        last = None
        for name, source in order:
            if groups and source is last:
                groups[-1].append(name)
            else:
                groups.append([name])
            last = source
        return groups


def encoder_blocks(unit_map: UnitMap) -> list[str]:
    """The encoder layers' module names, in order (where the residual stream is observed)."""
    return [site.module for site in unit_map["residual"].sites if site.kind == "input"]


def split_returns(y: Any) -> tuple[Tensor, Any]:
    """A layer's hidden states and what it returned beside them: None, or its returns with None in
    place of the hidden states (what the replay puts them back into)."""
    if isinstance(y, (tuple, list)):
        return y[0], type(y)((None, *y[1:]))
    return y, None


def sampled_rows(value: Tensor, mask: Tensor | None, b: int, module: str, seed: int, cap: int | None) -> Tensor:
    """The rows of ``value`` (module ``module``'s input or output on batch ``b``) that a repair reads:
    real tokens (``mask``), at most ``cap`` of them, a subset seeded by (``seed``, ``b``, ``module``)."""
    flat = value.reshape(-1, value.shape[-1])
    if value.ndim == 3 and mask is not None and tuple(mask.shape) == tuple(value.shape[:2]):
        rows = mask.reshape(-1).to(flat.device).bool().nonzero().squeeze(1)
    else:
        rows = torch.arange(flat.shape[0], device=flat.device)
    if cap is not None and rows.numel() > cap:
        key = zlib.crc32(f"{seed}/{b}/{module}".encode())
        pick = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(key))[:cap]
        rows = rows[pick.sort().values.to(rows.device)]
    return flat.index_select(0, rows)


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


class LayerInputs:
    """One model's calibration hidden states cached at the input of one encoder layer, per batch,
    and advanced layer by layer: observing a module of layer ``l`` runs layer ``l`` alone, so a
    repair in forward order costs about one forward pass per model, not one per corrected map.
    Once past the last layer, :meth:`replay` runs what follows the encoder (pooler, task heads)
    from the cached outputs, without running a layer again.

    With ``reuse`` (the merged model, whose layer is observed once per group of maps), each
    observation also keeps the outputs of the layer's submodules that finish before the observed
    maps start (:meth:`observe_all`): they can no longer change within this layer, since maps are
    corrected in forward order, so later runs of the layer (the next groups, :meth:`advance`) take
    them as they are instead of running them again (BERT: the attention block once the attention
    output projection is corrected, the FFN's first map once its output map is). Only a module
    called once per layer run is kept, with an output no larger than the layer's input, or no
    larger than the layer's widest linear output where it runs a linear map (a wide output is worth
    its memory only where it saves a product: BERT's ``intermediate``, ViT's ``mlp.fc1``, not its
    activation), and a kept module's parts are dropped once it is kept: BERT holds at most the
    attention block's output and the FFN's inner activations (5 copies of the hidden states), ViT
    also its two norms' outputs. The values are the same bits as a full run.

    The other arguments of a layer call (attention mask, ...) are recorded at the first layer and
    reused for every layer, as BERT- and ViT-like encoders pass the same ones to each layer.

    ``recorded`` (a parent's outputs kept by the statistics pass, :mod:`.recorded`): its batches never
    run; :meth:`advance` reads their rows, and at the last layer their encoder outputs.

    What waits longest is written out of memory (:class:`~hf_mudsc.spill.Spill`, CPU tensors; kept in
    memory where the file cannot be written): a parent's hidden states (read once per layer, while the
    merged model corrects the layer they wait for), and a kept output larger than the layer's input
    (BERT's FFN activations, read once, to advance). The merged model's hidden states and its smaller
    kept outputs, read by every group's run, stay in memory.
    """

    def __init__(self, ctx: RepairContext, model: nn.Module, blocks: Sequence[str], reuse: bool = False,
                 recorded: Recorded | None = None) -> None:
        self.ctx, self.model, self.blocks, self.reuse, self.recorded = ctx, model, list(blocks), reuse, recorded
        self.layer = 0
        self.states: list[tuple[Tensor | None, tuple, dict]] = []  # None: the hidden states are in the spill
        self.returned: list[Any] = []  # per batch: what the last layer returned, less its hidden states (replay)
        self._spill = Spill()
        self._kept: dict[str, list[Any]] = {}  # submodule of the current layer -> its output per batch
        self._calls: dict[tuple, _Calls] = {}  # submodule calls of a layer, by its structure (reuse only)
        first = model.get_submodule(self.blocks[0])
        device = next(model.parameters()).device
        for b, batch in enumerate(ctx.batches):
            if recorded is not None and b in recorded.batches:  # never runs: its outputs were recorded
                self.states.append((None, (), {}))
                continue

            def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
                hidden = args[0] if args else kwargs.pop("hidden_states")
                self.states.append((self._held(len(self.states), hidden), args[1:], kwargs))
                raise _Stop
            handle = first.register_forward_pre_hook(record, with_kwargs=True)
            try:
                with torch.no_grad():
                    model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
            except _Stop:
                pass
            finally:
                handle.remove()

    def hidden(self, b: int) -> Tensor:
        """The cached hidden states of batch ``b`` (the current layer's input)."""
        hidden = self.states[b][0]
        return self._spill.get(("state", b)) if hidden is None else hidden

    def _held(self, b: int, hidden: Tensor) -> Tensor | None:
        """What ``states`` holds for batch ``b``'s hidden states: None where a parent's are spilled."""
        return None if not self.reuse and self._spill.put(("state", b), hidden) else hidden

    def _call(self, b: int) -> Any:
        """Run the current layer on batch ``b``, its kept submodules standing in with their outputs
        (not copies, unless spilled). A kept output that the run changed in place (a version counter of
        its tensors moved) is dropped, so that its submodule runs again from then on."""
        _, args, kwargs = self.states[b]
        layer = self.model.get_submodule(self.blocks[self.layer])
        before = {name: _versions(outs[b]) for name, outs in self._kept.items()}
        stand_ins = {name: _Returns(self._spill.get(outs[b].key) if isinstance(outs[b], _Spilled) else outs[b])
                     for name, outs in self._kept.items()}
        try:
            with _swapped(layer, stand_ins):
                return layer(self.hidden(b), *args, **kwargs)
        finally:  # also when a capture stops the run early
            for name, versions in before.items():
                if _versions(self._kept[name][b]) != versions:
                    del self._kept[name]

    def observe_all(self, sites: Sequence[Site], inputs_at: Mapping[str, str] | None = None
                    ) -> Iterator[dict[Site, Tensor]]:
        """The sites' rows (modules of the current layer), batch by batch, from the cached inputs
        (``inputs_at``: see :meth:`RepairContext.capture`); the layer's weights may change only once
        every batch was observed."""
        keep = self._keepable(sites) if self.reuse else []
        kept: dict[str, list[Any]] = {name: [] for name in keep}
        versions: dict[str, list[int]] = {}  # a kept output's version counters when it was kept
        layer = self.model.get_submodule(self.blocks[self.layer])

        def keep_output(name: str, out: Any) -> None:
            key = (name, len(kept[name]))  # a spilled copy is what the module returned: no later change reaches it
            wide = isinstance(out, Tensor) and out.numel() > self.states[key[1]][0].numel()  # (reuse: states held)
            if wide and self._spill.put(key, out):
                kept[name].append(_Spilled(key))
            else:
                kept[name].append(out if all(_compact(t) for t in _tensors(out)) else detached_copy(out))
            versions[name] = _versions(kept[name][-1])

        for b in range(len(self.states)):
            handles = [layer.get_submodule(name).register_forward_hook(
                lambda mod, args, out, name=name: keep_output(name, out)) for name in kept]
            try:
                rows = self.ctx.capture(self.model, sites, b, lambda b=b: self._call(b), inputs_at=inputs_at)
            finally:
                for h in handles:
                    h.remove()
            for name in [n for n in kept if len(kept[n]) == b + 1 and _versions(kept[n][b]) != versions[n]]:
                del kept[name]  # changed in place later in the run: not what the submodule returned
            yield rows
        if any(len(outs) != len(self.states) for outs in kept.values()):
            return  # not observed to the end: keep nothing
        self._kept = {n: v for n, v in self._kept.items() if not any(n.startswith(k + ".") for k in kept)}
        self._kept.update(kept)

    def _keepable(self, sites: Sequence[Site]) -> list[str]:
        """The outermost submodules of the current layer that finish before the first of ``sites``'
        modules starts, called once per run, not kept yet, with outputs no larger than the layer's
        input, or than its widest linear output if they run a linear map."""
        layer_name = self.blocks[self.layer] + "."
        layer = self.model.get_submodule(self.blocks[self.layer])
        structure = _structure(layer)  # layers built alike call their submodules alike: observed once
        if structure not in self._calls:
            self._calls[structure] = _Calls.of(layer, lambda: self._call(0))
        calls = self._calls[structure]
        starts = [calls.order.index(("start", m[len(layer_name):])) for m, _ in sites
                  if m.startswith(layer_name) and ("start", m[len(layer_name):]) in calls.order]
        if not starts:
            return []
        first = min(starts)
        done = [name for kind, name in calls.order[:first] if kind == "end"]
        size = self.states[0][0].numel()
        candidates = [n for n in done if calls.count[n] == 1 and n not in self._kept
                      and all(calls.count[d] <= 1 for d in calls.count if d.startswith(n + "."))
                      and (calls.size[n] <= size or (calls.size[n] <= calls.widest and _runs_linear(layer.get_submodule(n))))]
        outer = set(self._kept) | set(candidates)
        return [n for n in candidates if not any(n.startswith(o + ".") for o in outer)]

    def advance(self, sites: Sequence[Site] = ()) -> list[dict[Site, Tensor]]:
        """Run the current layer (as it is now) on every batch: the cache moves to the next layer.
        Returns, per batch, the rows of ``sites`` (modules of this layer) seen on the way, so that a
        model whose layer does not change gives every target of the layer in one run."""
        seen = []
        last = self.layer == len(self.blocks) - 1
        self.returned = []
        with torch.no_grad():
            for b, (_, args, kwargs) in enumerate(self.states):
                if self.recorded is not None and b in self.recorded.batches:
                    seen.append(self.recorded.rows(b, sites))
                    if not last:  # nothing runs: only the encoder outputs are needed, for the replay
                        continue
                    hidden, rest = self.recorded.final(b)
                else:
                    out: dict[str, Any] = {}

                    def run(b: int = b) -> None:
                        out["layer"] = self._call(b)

                    seen.append(self.ctx.capture(self.model, sites, b, run, stop=False))
                    hidden, rest = split_returns(out["layer"])
                if last:  # what follows the encoder replays from it (the hidden states from the cache)
                    self.returned.append(rest)
                self.states[b] = (self._held(b, hidden), args, kwargs)
        self.layer += 1
        self._kept = {}
        return seen

    def finish(self) -> None:
        """Advance through the remaining layers: the cache then holds the encoder's outputs."""
        while self.layer < len(self.blocks):
            self.advance()

    def replay(self, sites: Sequence[Site], b: int, model: nn.Module | None = None) -> dict[Site, Tensor]:
        """The rows of ``sites`` after the encoder (pooler, heads) on batch ``b``: ``model`` (default:
        this one; or a model whose encoder layers equal this one's, as a merged task model's do) runs
        with its encoder layers replaced by this cache's outputs, so only the embeddings and what
        follows the encoder run. Needs :meth:`finish` first."""
        if self.layer < len(self.blocks):
            raise RuntimeError("replay needs the cache past the last layer: call finish() first")
        model = self.model if model is None else model
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.ctx.batches[b].items() if k != "labels"}
        y, hidden = self.returned[b], self.hidden(b)
        # a copy: what follows the encoder may change it
        last = _Returns(detached_copy(hidden if y is None else type(y)((hidden, *y[1:]))))
        with _swapped(model, {name: last for name in self.blocks}):
            return self.ctx.capture(model, sites, b, lambda: model(**inputs))


@dataclass
class _Calls:
    """The order in which a layer's submodules start and finish in one run (names relative to the
    layer), how often each is called, the size of its output (elements of its tensors) and the
    largest output of a linear submodule."""

    order: list[tuple[str, str]]
    count: dict[str, int]
    size: dict[str, int]
    widest: int = 0

    @classmethod
    def of(cls, layer: nn.Module, run: Callable[[], Any]) -> "_Calls":
        calls = cls([], {}, {})

        def started(name: str) -> None:
            calls.order.append(("start", name))
            calls.count[name] = calls.count.get(name, 0) + 1

        def ended(name: str, out: Any) -> None:
            calls.order.append(("end", name))
            calls.size[name] = calls.size.get(name, 0) + sum(t.numel() for t in _tensors(out))

        handles = []
        for name, module in layer.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(lambda mod, args, name=name: started(name)))
                handles.append(module.register_forward_hook(lambda mod, args, out, name=name: ended(name, out)))
        try:
            with torch.no_grad():
                run()
        finally:
            for h in handles:
                h.remove()
        calls.widest = max((calls.size[n] for n, m in layer.named_modules() if isinstance(m, nn.Linear)), default=0)
        return calls


def _runs_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def _structure(layer: nn.Module) -> tuple:
    """What a layer's submodule calls depend on: every submodule's name, class and parameter shapes."""
    return tuple((name, type(module).__name__, tuple(tuple(p.shape) for p in module.parameters(recurse=False)))
                 for name, module in layer.named_modules())


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _versions(value: Any) -> list[int]:
    """The version counters of ``value``'s tensors (each in-place change of a tensor moves its own)."""
    return [t._version for t in _tensors(value)]


def _compact(t: Tensor) -> bool:
    """Whether ``t`` spans its whole storage (kept as it is, it holds no more memory than a copy)."""
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


def detached_copy(value: Any) -> Any:
    """A copy of a module's output (tensors cloned: a caller may change them in place later)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(detached_copy(v) for v in value)
    return value


@contextmanager
def _swapped(root: nn.Module, stand_ins: Mapping[str, nn.Module]) -> Iterator[None]:
    """``root``'s submodules named in ``stand_ins`` replaced by the given modules, then put back."""
    swapped = []
    try:
        for name, stand_in in stand_ins.items():
            owner, _, child = name.rpartition(".")
            container = root.get_submodule(owner) if owner else root
            swapped.append((container, child, container._modules[child]))
            container._modules[child] = stand_in
        yield
    finally:
        for container, child, module in reversed(swapped):
            container._modules[child] = module


@dataclass(frozen=True)
class _Spilled:
    """A kept output written to the :class:`~hf_mudsc.spill.Spill` under ``key``."""

    key: tuple[str, int]


class _Returns(nn.Module):
    """Stands in for a module of :class:`LayerInputs` (an encoder layer during a replay, a kept
    submodule of a layer): returns ``value``, whatever it is called with."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.value

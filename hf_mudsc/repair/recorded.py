"""The parents' outputs that the repairs need, recorded while the statistics pass runs the parents.

The repairs' targets are the parents' outputs of every linear map of every encoder layer on the
repairs' rows (:func:`.context.sampled_rows`), and the parents' encoder outputs, from which what
follows the encoder is replayed. They do not depend on the merge, and the statistics pass already
runs both parents over its batches, which are the repairs' first batches (the statistics read the
first ``statistics_samples`` drawn rows and the repairs the first ``repair_samples``, each head batched
apart from the rest: :attr:`.Calibration.apart`; where the repairs read fewer rows, only their batches
are recorded).
:class:`ParentOutputs` keeps them from that pass, in a spill file, so that on those batches the
repairs read them instead of running the parents again (:class:`.context.LayerInputs`): about half of
a BERT-base parent's run through the repairs of 1000 texts, all of it at 512 texts or fewer.

Recorded on CPU parents only (on a device the run costs less than writing its outputs out), up to
:data:`MAX_BYTES` or half the temporary folder's free space, and used only where they are what the
repairs would compute: the same model objects (not half-precision parents, which the repairs run as
float32 copies), the same seed and token cap, and batches equal to the recorded ones. Anything else
runs the parents as before; the repaired weights are the same bits either way.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..spill import Spill
from ..unitmaps.spaces import UnitMap
from .context import Site, detached_copy, encoder_blocks, sampled_rows, split_returns

MAX_BYTES = 8 * 2**30  # recorded outputs at most (temporary files); the repairs run the parents on later batches


class ParentOutputs:
    """Outputs of ``models`` (the parents as merged) on the batches of one statistics pass: per
    parent, batch and linear map of an encoder layer (those of ``unit_map``) the rows the repairs
    sample with ``seed`` and ``cap``, and each batch's encoder output; ``rows``: only the first batches
    up to this many rows (those the repairs read), None: every batch."""

    def __init__(self, models: Sequence[nn.Module], unit_map: UnitMap, seed: int, cap: int | None,
                 rows: int | None = None) -> None:
        self.models, self.blocks, self.seed, self.cap = list(models), encoder_blocks(unit_map), seed, cap
        self.rows = rows
        # at most half the free space of the temporary folder: what else waits in files there needs room too
        self.max_bytes = min(MAX_BYTES, shutil.disk_usage(tempfile.gettempdir()).free // 2)
        self.linears = [[name for name, mod in m.named_modules()
                         if isinstance(mod, nn.Linear) and any(name.startswith(b + ".") for b in self.blocks)]
                        for m in self.models]
        self.inputs: list[dict[str, Tensor]] = []  # per batch: what it was, to check the repairs' batches
        self.complete: set[int] = set()  # batches with every output of every parent written
        self._rest: dict[tuple[int, int], Any] = {}  # (parent, batch) -> the last layer's returns beside its hidden states
        self._spill = Spill()
        self._bytes = 0
        self._rows = 0  # rows of the batches recorded so far
        self._failed = False  # a write was refused (full disk) or over max_bytes: nothing more is recorded

    @staticmethod
    def usable(models: Sequence[nn.Module]) -> bool:
        """Whether recording pays for these parents: every parameter on the CPU, none in half precision."""
        return all(p.device.type == "cpu" and p.dtype not in (torch.float16, torch.bfloat16)
                   for m in models for p in m.parameters())

    @contextmanager
    def recording(self) -> Iterator[Any]:
        """Hooks on the parents while the statistics pass runs them; yields the callback that it calls
        with each batch before running the parents on it."""
        state: dict[str, Any] = {"b": -1, "mask": None, "seen": set()}

        def start(batch: Mapping[str, Tensor]) -> None:
            self._close(state)
            if self.rows is not None and self._rows >= self.rows:  # past the repairs' rows: nothing more
                state.update(b=-1)
                return
            state.update(b=len(self.inputs), mask=batch.get("attention_mask"), seen=set())
            self.inputs.append({k: v.detach().cpu().clone() for k, v in batch.items() if k != "labels"})
            self._rows += len(next(iter(self.inputs[-1].values())))

        def write(key: tuple, value: Tensor) -> None:
            if self._failed or key in state["seen"]:  # a module called twice in a pass: its first call
                return
            size = value.numel() * value.element_size()
            if self._bytes + size > self.max_bytes or not self._spill.put(key, value.detach()):
                self._failed = True
                return
            self._bytes += size
            state["seen"].add(key)

        def linear(i: int, name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
                if state["b"] >= 0:
                    write((i, state["b"], name), sampled_rows(output, state["mask"], state["b"], name, self.seed,
                                                              self.cap))
            return hook

        def last(i: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                if state["b"] < 0:
                    return
                hidden, rest = split_returns(output)
                write((i, state["b"], None), hidden)
                self._rest[(i, state["b"])] = detached_copy(rest)
            return hook

        handles = []
        try:
            for i, model in enumerate(self.models):
                handles += [model.get_submodule(n).register_forward_hook(linear(i, n)) for n in self.linears[i]]
                handles.append(model.get_submodule(self.blocks[-1]).register_forward_hook(last(i)))
            yield start
            self._close(state)
        finally:
            for h in handles:
                h.remove()

    def _close(self, state: dict[str, Any]) -> None:
        """Mark the batch just run complete if every output of every parent was written."""
        b = state["b"]
        wanted = {(i, b, n) for i, names in enumerate(self.linears) for n in names} | \
            {(i, b, None) for i in range(len(self.models))}
        if b >= 0 and not self._failed and wanted <= state["seen"]:
            self.complete.add(b)

    def read(self, i: int, b: int, module: str | None) -> Tensor:
        """Parent ``i``'s rows of linear map ``module`` on batch ``b`` (None: its encoder output)."""
        return self._spill.get((i, b, module))

    def returned(self, i: int, b: int) -> Any:
        """What parent ``i``'s last layer returned beside its hidden states on batch ``b``."""
        return self._rest[(i, b)]

    def for_parent(self, i: int, model: nn.Module, batches: Sequence[Mapping[str, Tensor]], seed: int,
                   cap: int | None) -> "Recorded | None":
        """What parent ``i`` (``model``) would give on ``batches`` with ``seed`` and ``cap`` that was
        recorded; None when nothing applies."""
        if i >= len(self.models) or model is not self.models[i] or (seed, cap) != (self.seed, self.cap):
            return None
        same = {b for b in self.complete if b < len(batches) and _equal(batches[b], self.inputs[b])}
        return Recorded(self, i, same) if same else None


class Recorded:
    """One parent's recorded outputs on the batches ``batches`` (their indices)."""

    def __init__(self, store: ParentOutputs, i: int, batches: set[int]) -> None:
        self.store, self.i, self.batches = store, i, batches

    def rows(self, b: int, sites: Sequence[Site]) -> dict[Site, Tensor]:
        """The rows of ``sites`` (outputs of linear maps of an encoder layer) on batch ``b``."""
        if any(kind != "output" for _, kind in sites):
            raise ValueError(f"only the outputs of linear maps are recorded, not {sorted(sites)}")
        return {(m, kind): self.store.read(self.i, b, m) for m, kind in sites}

    def final(self, b: int) -> tuple[Tensor, Any]:
        """The last encoder layer's hidden states on batch ``b``, and what it returned beside them
        (:func:`.context.split_returns`)."""
        return self.store.read(self.i, b, None), self.store.returned(self.i, b)


def _equal(batch: Mapping[str, Tensor], recorded: Mapping[str, Tensor]) -> bool:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return inputs.keys() == recorded.keys() and all(
        isinstance(v, Tensor) and v.shape == recorded[k].shape and torch.equal(v.cpu(), recorded[k])
        for k, v in inputs.items())

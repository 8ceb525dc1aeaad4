"""Merge spaces and unit maps: the declarative description of an architecture.

A *merge space* is a set of units that every parameter touching it must be transformed
with together (the residual stream, one layer's q/k dims, ...). A *unit map* is the list of
spaces of one concrete model plus the task-head parameters, which are never merged.
Algorithms only ever read unit maps; unit maps know nothing of the algorithms.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence

Role = Literal["in", "out"]
FFN_WIDTH = {"layer.0.ffn": "intermediate_size"}  # the width fields of BERT's and ViT's configs
EMBEDDINGS = -1  # owner layer of embedding parameters (always merged)


class UnitMapError(ValueError):
    """A unit map does not describe the model it is applied to."""


@dataclass(frozen=True)
class Member:
    """One axis of one parameter that belongs to a space.

    ``role="out"``: the tensor produces the space along ``axis`` (rows of a Linear weight,
    its bias, LayerNorm gamma/beta, embedding columns). ``role="in"``: it reads the space
    (columns of a Linear weight). ``layer`` is the layer that owns the parameter:
    ``EMBEDDINGS`` (-1) for embeddings, ``0..L-1`` for encoder layers and ``L`` for what comes
    after the last layer (final norm, pooler); partial merging reads it.
    """

    param: str
    axis: int
    role: Role
    layer: int


@dataclass(frozen=True)
class Site:
    """Where a space's activations are observed: a module's input (first positional
    argument or ``hidden_states``) or output (first element if a tuple).

    ``per_token``: the tensor is ``(batch, tokens, units)`` and every unmasked token is a
    sample; otherwise it is ``(batch, units)`` and every row is a sample.
    """

    module: str
    kind: Literal["input", "output"]
    per_token: bool = True


@dataclass(frozen=True)
class Heads:
    """Attention-head structure of a space: ``num_heads`` blocks of ``head_dim`` units."""

    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class MergeSpace:
    """A set of ``dim`` units transformed together in every model.

    ``layer`` is the layer whose merging decides this space (``EMBEDDINGS`` for the
    residual stream, which is always merged; ``L`` for post-trunk spaces like the pooler).
    ``group`` names the head group: the QK and VO spaces of one layer share one head
    assignment and carry the same group name.
    """

    name: str
    dim: int
    members: tuple[Member, ...]
    sites: tuple[Site, ...] = ()
    layer: int = EMBEDDINGS
    heads: Heads | None = None
    group: str | None = None

    @property
    def readers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == "in")

    @property
    def writers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == "out")


@dataclass
class UnitMap:
    """All merge spaces of one concrete model, plus its task-head parameters.

    Task-head parameters (classifiers) are kept per task; their ``in`` members appear in
    the spaces they read, and their other axes (labels, private hidden units) are free.
    ``width_fields``: space -> the config field that holds its width (besides ``hidden_size`` and
    ``num_attention_heads``), which a merge of parents of different widths sets.
    """

    family: str
    num_layers: int
    spaces: list[MergeSpace]
    task_heads: tuple[str, ...] = ()
    width_fields: Mapping[str, str] = field(default_factory=lambda: dict(FFN_WIDTH))
    _by_name: dict[str, MergeSpace] = field(init=False, repr=False)
    _by_param: dict[str, list[tuple[MergeSpace, Member]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [s.name for s in self.spaces]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UnitMapError(f"unit map '{self.family}' names spaces twice: {sorted(dup)}")
        self._by_name = {s.name: s for s in self.spaces}
        self._by_param = {}
        for s in self.spaces:
            for m in s.members:
                self._by_param.setdefault(m.param, []).append((s, m))

    def __getitem__(self, name: str) -> MergeSpace:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def space_names(self) -> list[str]:
        return [s.name for s in self.spaces]

    def head_groups(self) -> dict[str, tuple[MergeSpace, ...]]:
        """Group name -> the spaces (QK first, then VO) that share one head assignment."""
        groups: dict[str, list[MergeSpace]] = {}
        for s in self.spaces:
            if s.group is not None:
                groups.setdefault(s.group, []).append(s)
        return {g: tuple(v) for g, v in groups.items()}

    def param_members(self) -> dict[str, list[tuple[MergeSpace, Member]]]:
        """Parameter name -> every (space, member) that touches it."""
        return self._by_param

    def param_layer(self, name: str) -> int:
        """Owner layer of a parameter (task heads sit after the last layer)."""
        members = self._by_param.get(name)
        if not members:
            return self.num_layers
        return members[0][1].layer

    def validate(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Check this map against a model's parameter shapes; raise ``UnitMapError``.

        Every parameter is either a task head or a member of some space; no (parameter,
        axis) is in two spaces; member sizes equal the space dimension; heads divide it;
        one parameter has one owner layer; every mapped parameter exists; every shared
        (non-head) parameter writes a space (has an ``out`` member), so merging averages it.
        """
        covered = self.param_members()
        for name in shapes:
            if name not in covered and name not in self.task_heads:
                raise UnitMapError(
                    f"parameter '{name}' is not covered by the '{self.family}' unit map "
                    "(an unsupported head or architecture variant; register a unit map for it)"
                )
        for name in list(covered) + list(self.task_heads):
            if name not in shapes:
                raise UnitMapError(f"the '{self.family}' unit map names '{name}', which the model does not have")
        for s in self.spaces:
            if s.dim <= 0:
                raise UnitMapError(f"space '{s.name}' has dimension {s.dim}")
            if s.heads is not None:
                h = s.heads
                if h.num_heads <= 0 or h.head_dim * h.num_heads != s.dim:
                    raise UnitMapError(
                        f"space '{s.name}': {h.num_heads} heads of {h.head_dim} units do not divide its {s.dim} units"
                    )
        for name, pairs in covered.items():
            shape = shapes[name]
            axes: set[int] = set()
            layers = {m.layer for _, m in pairs}
            if len(layers) > 1:
                raise UnitMapError(f"parameter '{name}' is given several owner layers {sorted(layers)}")
            for s, m in pairs:
                if not 0 <= m.axis < len(shape):
                    raise UnitMapError(f"parameter '{name}' has no axis {m.axis} (shape {tuple(shape)})")
                if m.axis in axes:
                    raise UnitMapError(f"axis {m.axis} of '{name}' belongs to more than one space")
                axes.add(m.axis)
                if shape[m.axis] != s.dim:
                    raise UnitMapError(
                        f"axis {m.axis} of '{name}' has {shape[m.axis]} units but space '{s.name}' has {s.dim}"
                    )
            if name in self.task_heads and any(m.role == "out" for _, m in pairs):
                raise UnitMapError(f"task head '{name}' may only read merge spaces")
            if name not in self.task_heads and all(m.role == "in" for _, m in pairs):
                raise UnitMapError(f"parameter '{name}' of the '{self.family}' unit map only reads merge spaces: a "
                                   "shared parameter needs an 'out' member (else its copies are summed, not "
                                   "averaged); give it the space it writes, or list it among the task heads")
        for g, spaces in self.head_groups().items():
            heads = {s.heads for s in spaces}
            if None in heads or len(heads) != 1:
                raise UnitMapError(f"head group '{g}' mixes spaces with different head structures")


def members(params: Iterable[str], axis: int, role: Role, layer: int) -> tuple[Member, ...]:
    """Shorthand: the same (axis, role, layer) for several parameters."""
    return tuple(Member(p, axis, role, layer) for p in params)

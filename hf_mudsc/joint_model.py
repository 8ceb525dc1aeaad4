"""The joint multi-task model (DESIGN §3.5, §3.6): one shared trunk serving every task at once.

After a merge each task ``i`` has a standard model of one common class whose parameters are either
*shared* (identical across tasks) or *private* (its head and, in partial merges, its later layers).
``MuDSCJointModel`` stores task 0's complete model as ``model`` and, for every task ``i >= 1``, only
its private parameters, in ``private[str(i)]``: an ``nn.ParameterDict`` whose keys are the parameter
names with every ``'.'`` written ``'__'`` (module attribute names cannot hold dots). No tensor is
stored twice, so ``save_pretrained`` writes plain safetensors. Task ``i >= 1`` runs as task 0's module
with its private tensors swapped in (``torch.func.functional_call``).

``forward`` follows ZipIt's joint protocol: each task's logits go through ``log_softmax`` and are
concatenated, so the argmax is over the union of the tasks' labels (and a pipeline's softmax ranks
the union by each task's own probability). Importing this module registers the model with the Auto
classes.
"""
from __future__ import annotations

import math
import re
from typing import Any, Collection, Sequence

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput, TokenClassifierOutput
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .loading import config_differences

# The IOB tag of a token outside every entity: it means the same in every task, and token-classification
# pipelines drop it by name, so it is never prefixed.
OUTSIDE = "O"
# The tags in front of an entity's name (IOB, IOBES, BILOU): a task prefix goes after them.
IOB_TAGS = ("B", "I", "E", "S", "L", "U")


# The heads whose outputs are one set of class logits: what the joint model serves (not extractive QA,
# which gives a start and an end logit per token).
JOINT_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForImageClassification",
               "ForImageClassificationWithTeacher")


def serves_joint(model: PreTrainedModel) -> bool:
    """Whether ``model``'s head gives single-label class logits that a joint model can serve: a class
    of :data:`JOINT_HEADS` with more than one label, not regression nor multi-label (sigmoid) outputs."""
    config = model.config
    return (type(model).__name__.endswith(JOINT_HEADS) and config.num_labels > 1
            and config.problem_type not in ("regression", "multi_label_classification"))


def _escape(name: str) -> str:
    """A parameter name as a ``ParameterDict`` key: ``'.'`` is written ``'__'``."""
    return name.replace(".", "__")


class MuDSCJointConfig(PretrainedConfig):
    """Configuration of a :class:`MuDSCJointModel`.

    ``task_configs[i]``: task ``i``'s config as a dict (with ``architectures``); ``private_shapes[i]``:
    name -> shape of task ``i``'s private parameters (task 0's live in ``model``, the others in
    ``private``); ``task_names``; ``label_offsets``: task ``i``'s logits are the union indices
    ``label_offsets[i]:label_offsets[i + 1]``; or, for tasks that all have one set of label names,
    ``label_columns[i]``: the column of each of task ``i``'s labels among them (``label_offsets`` is
    then ``None``). ``id2label``/``label2id`` describe the union (the one set).
    """

    model_type = "mudsc-joint"

    task_configs: list[dict[str, Any]] | None = None
    private_shapes: list[dict[str, list[int]]] | None = None
    task_names: list[str] | None = None
    label_offsets: list[int] | None = None
    label_columns: list[list[int]] | None = None

    def task_config(self, i: int) -> PretrainedConfig:
        """Task ``i``'s own config object."""
        d = dict(self.task_configs[i])
        return CONFIG_MAPPING[d["model_type"]].from_dict(d)


def _architecture(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The transformers class named by ``config.architectures[0]``."""
    name = (config.architectures or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise ValueError(f"task config names no transformers architecture: {config.architectures}")
    return cls


class MuDSCJointModel(PreTrainedModel):
    """Every merged task at once: shared trunk, per-task private tensors, logits over the union of labels."""

    config_class = MuDSCJointConfig

    def __init__(self, config: MuDSCJointConfig) -> None:
        if not config.task_configs:
            raise ValueError("MuDSCJointConfig has no task_configs; build the model with from_task_models")
        super().__init__(config)
        first = config.task_config(0)
        self.model = _architecture(first)(first)
        self.main_input_name = self.model.main_input_name
        self.private = nn.ModuleDict(
            {
                str(i): nn.ParameterDict({_escape(n): nn.Parameter(torch.zeros(s)) for n, s in shapes.items()})
                for i, shapes in enumerate(config.private_shapes)
                if i > 0
            }
        )
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Private tensors start at zero (they are always loaded or copied in)."""
        if isinstance(module, nn.ParameterDict):
            for p in module.values():
                init.zeros_(p)

    @property
    def num_tasks(self) -> int:
        """How many tasks the model serves."""
        return len(self.config.task_configs)

    @classmethod
    def from_task_models(
        cls,
        task_models: Sequence[PreTrainedModel],
        shared: Collection[str],
        task_names: Sequence[str],
    ) -> MuDSCJointModel:
        """The joint model of merged task models whose parameters named in ``shared`` are identical.

        All tasks must be of one head class with configs equal up to their labels; every parameter
        not in ``shared`` is private to its task. Raises ``ValueError`` otherwise.
        """
        shared = set(shared)
        _check_tasks(task_models, shared, task_names)
        first = task_models[0]
        task_configs, id2label_per_task = [], []
        for m in task_models:
            d = m.config.to_dict()
            d.pop("_name_or_path", None)  # where the parent was read from (a local path): not the task's
            d["architectures"] = [type(m).__name__]
            d["dtype"] = str(m.dtype).removeprefix("torch.")
            task_configs.append(d)
            id2label_per_task.append([m.config.id2label[k] for k in sorted(m.config.id2label)])
        columns = _one_label_set(id2label_per_task)
        if columns is None:
            labels, offsets = _union_labels(id2label_per_task, task_names)
        else:  # parents of one task (their labels in any order): one set of labels
            labels, offsets = id2label_per_task[0], None
        private_shapes = [
            {n: list(p.shape) for n, p in m.named_parameters() if n not in shared} for m in task_models
        ]
        config = MuDSCJointConfig(
            task_configs=task_configs,
            private_shapes=private_shapes,
            task_names=list(task_names),
            label_offsets=offsets,
            label_columns=columns,
            id2label=dict(enumerate(labels)),
            label2id={label: j for j, label in reversed(list(enumerate(labels)))},  # "O": its first
        )
        with init.no_init_weights():
            joint = cls(config).to(first.dtype)
        with torch.no_grad():
            joint.model.load_state_dict(first.state_dict())
            for name, buf in first.named_buffers():
                joint.model.get_buffer(name).copy_(buf)
            for i, m in enumerate(task_models[1:], start=1):
                store = joint.private[str(i)]
                for name in private_shapes[i]:
                    store[_escape(name)].copy_(m.get_parameter(name))
        return joint.train(first.training)

    def private_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Task ``i``'s private parameters by their names in the task model."""
        if i == 0:
            return {n: self.model.get_parameter(n) for n in self.config.private_shapes[0]}
        store = self.private[str(i)]
        return {n: store[_escape(n)] for n in self.config.private_shapes[i]}

    def task_model(self, i: int) -> PreTrainedModel:
        """A standalone standard model of task ``i`` (its own class and config), copied from the joint weights."""
        config = self.config.task_config(i)
        with init.no_init_weights():
            model = _architecture(config)(config).to(self.model.dtype)
        state = {**self.model.state_dict(), **self.private_tensors(i)}
        model.load_state_dict({k: v.detach() for k, v in state.items()})
        with torch.no_grad():
            for name, buf in self.model.named_buffers():
                model.get_buffer(name).copy_(buf)
        return model.train(self.training)

    def _task_output(self, i: int, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Task ``i``'s model output (task 0's module with task ``i``'s private tensors)."""
        if i == 0:
            return self.model(*args, **kwargs)
        return torch.func.functional_call(self.model, self.private_tensors(i), args, kwargs, strict=False)

    def _heads_only(self) -> bool:
        """Whether every private tensor lies outside the base model (a full merge: only the heads are
        the tasks' own), so that the shared trunk runs once for all tasks."""
        prefix = f"{self.model.base_model_prefix}."
        return self.model.base_model is not self.model and not any(
            name.startswith(prefix) for shapes in self.config.private_shapes for name in shapes)

    def task_logits(self, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        """Each task's raw logits, in task order (``labels`` and ``return_dict`` are ignored). When
        the tasks share the whole trunk, it runs once: the other tasks' heads read its output."""
        kwargs.pop("labels", None)
        kwargs["return_dict"] = True
        if self.num_tasks > 1 and self._heads_only():
            trunk = self.model.base_model
            seen: list[Any] = []
            hook = trunk.register_forward_hook(lambda module, inputs, output: seen.append(output))
            try:
                outs = [self._task_output(0, args, kwargs)]
            finally:
                hook.remove()
            trunk.forward = lambda *a, **k: seen[0]  # the same shared weights and inputs: the same output
            try:
                outs += [self._task_output(i, args, kwargs) for i in range(1, self.num_tasks)]
            finally:
                del trunk.forward
        else:
            outs = [self._task_output(i, args, kwargs) for i in range(self.num_tasks)]
        if not all(hasattr(o, "logits") for o in outs):
            raise TypeError(f"{type(self.model).__name__} returns no logits")
        return [o.logits for o in outs]

    def _outside_columns(self) -> list[int] | None:
        """Each task's column of :data:`OUTSIDE` among its own labels, or ``None`` when a task has none
        (or all tasks have one set of labels)."""
        offsets, names = self.config.label_offsets, self.config.id2label
        if offsets is None:
            return None
        columns = []
        for i in range(self.num_tasks):
            own = [names[j] for j in range(offsets[i], offsets[i + 1])]
            if OUTSIDE not in own:
                return None
            columns.append(own.index(OUTSIDE))
        return columns

    def forward(
        self, *args: Any, labels: torch.Tensor | None = None, return_dict: bool | None = None, **kwargs: Any
    ) -> SequenceClassifierOutput | ImageClassifierOutput | TokenClassifierOutput | tuple:
        """Joint logits: each task's ``log_softmax`` concatenated on the last axis (the union of labels);
        for tasks with one set of labels (parents of one task), the log of the mean of their
        probabilities over that set (the ensemble of their heads: a self-merge gives its parent's).
        Token classification where every task has the tag :data:`OUTSIDE`: the tasks are read as
        independent taggers of which at most one sees an entity. Each task's "O" column holds the sum
        of all their "O" log-probabilities (no task sees an entity there), and its entity columns add
        the other tasks' "O" (this task sees it, the others see nothing), so a token is tagged with a
        task's entity exactly where that task prefers it to "O" (a self-merge tags as its parent), and
        two tasks' entities compete by their log-odds against "O".

        ``labels`` (union indices, -100 ignored) give ``loss``: the cross-entropy over the union.
        """
        parts = [F.log_softmax(t, dim=-1) for t in self.task_logits(*args, **kwargs)]
        if self.config.label_columns is not None:  # each task's labels in the common order, then their mean
            parts = [part[..., torch.argsort(torch.tensor(c, device=part.device))]
                     for part, c in zip(parts, self.config.label_columns)]
            parts = [torch.logsumexp(torch.stack(parts), dim=0) - math.log(len(parts))]
        outside = self._outside_columns() if parts[0].dim() == 3 else None
        if outside is not None:  # out of place: the log-softmax outputs are kept for the gradient
            nobody = sum(part[..., o] for part, o in zip(parts, outside)).unsqueeze(-1)
            parts = [torch.where(torch.arange(part.shape[-1], device=part.device) == o, nobody,
                                 part + (nobody - part[..., o:o + 1])) for part, o in zip(parts, outside)]
        logits = torch.cat(parts, dim=-1)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1))
        if logits.dim() == 3:
            out = TokenClassifierOutput(loss=loss, logits=logits)
        elif self.main_input_name == "pixel_values":
            out = ImageClassifierOutput(loss=loss, logits=logits)
        else:
            out = SequenceClassifierOutput(loss=loss, logits=logits)
        return out if (return_dict if return_dict is not None else self.config.return_dict) else out.to_tuple()


def _check_tasks(task_models: Sequence[PreTrainedModel], shared: set[str], task_names: Sequence[str]) -> None:
    """Raise ``ValueError`` unless the task models can form one joint model."""
    if not task_models:
        raise ValueError("at least one task model is needed")
    if len(task_names) != len(task_models) or len(set(task_names)) != len(task_names):
        raise ValueError(f"one distinct name per task model is needed, got {list(task_names)}")
    first = task_models[0]
    cls = type(first)
    if first.base_model is first:
        raise ValueError(f"a joint model needs task heads; {cls.__name__} has none")
    for m in task_models:
        if not serves_joint(m):
            raise ValueError(f"a joint model serves single-label classification heads ({', '.join(JOINT_HEADS)}, "
                             f"two labels or more), not {type(m).__name__} with problem_type "
                             f"{m.config.problem_type!r} and {m.config.num_labels} label(s)")
    params = dict(first.named_parameters())
    unknown = sorted(shared - params.keys())
    if unknown:
        raise ValueError(f"shared names that are no parameters of {cls.__name__}: {unknown[:3]}")
    buffers = dict(first.named_buffers())
    for i, m in enumerate(task_models[1:], start=1):
        if type(m) is not cls:
            raise ValueError(
                f"all tasks must share one architecture class: task {i} ({task_names[i]}) is "
                f"{type(m).__name__}, task 0 is {cls.__name__}"
            )
        if m.dtype != first.dtype:
            raise ValueError(f"task {i} ({task_names[i]}) is {m.dtype}, task 0 is {first.dtype}")
        diff = config_differences(first.config, m.config)  # every task runs through task 0's module
        if diff:
            raise ValueError(f"task {i} ({task_names[i]}) has a config that differs beyond labels: {diff}")
        theirs = dict(m.named_parameters())
        for name in (n for n in params if n in shared):  # in parameter order: the first difference is named
            a, b = params[name], theirs[name]
            if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b.to(a.device)):
                raise ValueError(f"shared tensor {name!r} differs between task 0 and task {i} ({task_names[i]})")
        for name, buf in m.named_buffers():
            if not torch.equal(buffers[name], buf.to(buffers[name].device)):
                raise ValueError(f"buffer {name!r} differs between task 0 and task {i} ({task_names[i]})")


def _one_label_set(id2label_per_task: Sequence[Sequence[str]]) -> list[list[int]] | None:
    """When every task has the same label names (in any order, each once), and names that say what
    they are (not transformers' defaults ``LABEL_0``, ...: tasks that kept them may be any tasks): the
    column of each task's labels among the first task's; else ``None``."""
    first = list(id2label_per_task[0])
    if len(id2label_per_task) < 2 or len(set(first)) != len(first) \
            or all(re.fullmatch(r"LABEL_\d+", str(label)) for label in first) \
            or any(sorted(labels) != sorted(first) for labels in id2label_per_task):
        return None
    return [[first.index(label) for label in labels] for labels in id2label_per_task]


def _union_labels(id2label_per_task: Sequence[Sequence[str]], task_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """Union label names in task order, and offsets. A name found in several tasks is prefixed
    ``"{task}/"``, but :data:`OUTSIDE`; an IOB tag is named by its entity (``B-PER`` and ``I-PER``
    are the entity ``PER``: when several tasks tag ``PER``, all their tags of it are prefixed) and keeps
    its tag in front, ``"B-{task}/PER"``, as a token-classification pipeline reads it to group entities."""
    seen: dict[str, int] = {}
    for labels in id2label_per_task:
        for name in {_iob(label)[1] for label in labels}:
            seen[name] = seen.get(name, 0) + 1
    names, offsets = [], [0]
    for task, labels in zip(task_names, id2label_per_task):
        for label in labels:
            tag, name = _iob(label)
            if seen[name] > 1 and label != OUTSIDE:
                label = f"{tag}-{task}/{name}" if tag else f"{task}/{name}"
            names.append(label)
        offsets.append(len(names))
    named = [n for n in names if n != OUTSIDE]
    if len(set(named)) != len(named):
        raise ValueError(f"union label names are not unique: {names}")
    return names, offsets


def _iob(label: str) -> tuple[str, str]:
    """``(tag, entity)`` of an IOB tag such as ``"B-PER"``; ``("", label)`` for any other label."""
    tag, dash, entity = label.partition("-")
    return (tag, entity) if dash and tag in IOB_TAGS and entity else ("", label)


def register_auto_classes() -> None:
    """Register the joint model with ``AutoConfig`` and the Auto model classes (safe to call again)."""
    AutoConfig.register(MuDSCJointConfig.model_type, MuDSCJointConfig, exist_ok=True)
    for auto in (
        AutoModel,
        AutoModelForSequenceClassification,
        AutoModelForImageClassification,
        AutoModelForTokenClassification,
    ):
        auto.register(MuDSCJointConfig, MuDSCJointModel, exist_ok=True)


register_auto_classes()

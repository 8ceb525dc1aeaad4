"""ZipIt's evaluation protocol for models of tasks with disjoint label sets (DESIGN.md §6).

Task ``t`` has ``C_t`` classes; a test example carries its task id and its label inside that
task. Two scores:

- **joint accuracy**: softmax per task, concatenate over tasks, argmax over the union of all
  labels; right when the argmax falls on the example's label in its own task's slice. Needs
  the logits of every task.
- **per-task accuracy**: argmax inside the example's own task only; the mean over examples,
  and the breakdown by task.

:func:`evaluate_models` scores a list of standalone task models (model ``t`` gives task ``t``'s
logits): the merged task models, the ensemble of the parents (the upper bound, at N times the
compute), or one parent alone: pass ``None`` for the tasks it does not cover. A task without a
model is not scored, so a parent alone gets a per-task accuracy on its own task and no joint
accuracy.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor, nn

__all__ = [
    "DEFAULT_RUN",
    "PRESET_RUNS",
    "evaluate_models",
    "format_table",
    "image_batches",
    "joint_accuracy",
    "per_task_accuracy",
    "per_task_breakdown",
    "text_batches",
]

# Every preset of the engine as (row name, overrides of the merger's recipe), MuDSC without and
# with its default repairs (the product's default): the rows that the demo and the quality
# benchmarks report.
DEFAULT_RUN = "MuDSC zip + stats, lsq, heads"
PRESET_RUNS: list[tuple[str, dict[str, Any]]] = [
    ("average", {"method": "average"}),
    ("weight matching", {"method": "weight-matching"}),
    ("activation matching", {"method": "activation-matching"}),
    ("ZipIt! (published)", {"method": "zipit"}),
    ("MuDSC zip (alpha 0.5)", {"method": "mudsc", "mode": "zip", "repair": "none"}),
    ("MuDSC permute (alpha 0.5)", {"method": "mudsc", "mode": "permute", "repair": "none"}),
    (DEFAULT_RUN, {"method": "mudsc"}),
]

Batch = tuple[Mapping[str, Tensor], Tensor, Tensor]


def _check(task_logits: Sequence[Tensor | None], task_ids: Tensor, labels: Tensor) -> None:
    n = task_ids.shape[0]
    if labels.shape != (n,) or task_ids.dim() != 1:
        raise ValueError(f"task_ids {tuple(task_ids.shape)} and labels {tuple(labels.shape)} must be (N,)")
    for t, logits in enumerate(task_logits):
        if logits is not None and (logits.dim() != 2 or logits.shape[0] != n):
            raise ValueError(f"logits of task {t} are {tuple(logits.shape)}, expected ({n}, C_{t})")
    if n and (task_ids.min() < 0 or task_ids.max() >= len(task_logits)):
        raise ValueError(f"task ids must lie in 0..{len(task_logits) - 1}")


def joint_accuracy(task_logits: Sequence[Tensor], task_ids: Tensor, labels: Tensor) -> float:
    """Accuracy of the argmax over the union of all tasks' labels (softmax per task first).

    Args:
        task_logits: per task ``t``, the logits ``(N, C_t)`` of every example.
        task_ids: ``(N,)`` the task of each example.
        labels: ``(N,)`` each example's label inside its task.
    """
    if any(logits is None for logits in task_logits):
        raise ValueError("joint accuracy needs the logits of every task")
    _check(task_logits, task_ids, labels)
    if not len(labels):
        raise ValueError("no examples")
    probs = torch.cat([logits.float().softmax(dim=-1) for logits in task_logits], dim=-1)
    offsets = torch.tensor([0] + [logits.shape[1] for logits in task_logits]).cumsum(0)
    target = offsets[task_ids.cpu()] + labels.cpu()
    return (probs.cpu().argmax(dim=-1) == target).float().mean().item()


def _own_task_hits(task_logits: Sequence[Tensor | None], task_ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per example: whether its own task's argmax is right, and whether its task is scored."""
    _check(task_logits, task_ids, labels)
    task_ids, labels = task_ids.cpu(), labels.cpu()
    hits = torch.zeros(len(labels), dtype=torch.bool)
    scored = torch.zeros(len(labels), dtype=torch.bool)
    for t, logits in enumerate(task_logits):
        mine = task_ids == t
        if logits is None or not mine.any():
            continue
        hits[mine] = logits.cpu()[mine].argmax(dim=-1) == labels[mine]
        scored[mine] = True
    return hits, scored


def per_task_accuracy(task_logits: Sequence[Tensor | None], task_ids: Tensor, labels: Tensor) -> float:
    """Mean over examples of: argmax inside the example's own task == its label.

    A task whose logits are ``None`` is not scored (its examples do not count).
    """
    hits, scored = _own_task_hits(task_logits, task_ids, labels)
    if not scored.any():
        raise ValueError("no example belongs to a task with logits")
    return hits[scored].float().mean().item()


def per_task_breakdown(task_logits: Sequence[Tensor | None], task_ids: Tensor, labels: Tensor) -> list[float | None]:
    """Per task, the accuracy of the argmax inside the task on its examples
    (``None`` for a task without logits or without examples)."""
    hits, _ = _own_task_hits(task_logits, task_ids, labels)
    task_ids = task_ids.cpu()
    return [
        None if logits is None or not (task_ids == t).any() else hits[task_ids == t].float().mean().item()
        for t, logits in enumerate(task_logits)
    ]


def model_inputs(model: nn.Module, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``inputs`` on the model's device, floating tensors in the model's dtype."""
    param = next(model.parameters())
    return {
        k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) if isinstance(v, Tensor) else v
        for k, v in inputs.items()
    }


@torch.no_grad()
def evaluate_models(models: Sequence[nn.Module | None], batches: Iterable[Batch]) -> dict[str, Any]:
    """Score task models under ZipIt's protocol.

    Args:
        models: model ``t`` (a transformers classifier, or any module whose output has
            ``.logits`` or is the logits) gives task ``t``'s logits; ``None`` leaves task ``t``
            unscored (a parent alone: ``[parent_0, None]``).
        batches: ``(inputs, task_ids, labels)``: keyword inputs of every model, each example's
            task, its label inside the task. Every model runs on every example.

    Returns:
        ``{"joint": float | None, "per_task": float, "per_task_by_task": [float | None, ...],
        "examples": int}`` (the examples scored: those of tasks with a model); ``joint`` is
        ``None`` unless every task has a model.
    """
    if all(m is None for m in models):
        raise ValueError("no model to evaluate")
    modes = [m.training if m is not None else False for m in models]
    for m in models:
        if m is not None:
            m.eval()
    logits: list[list[Tensor]] = [[] for _ in models]
    ids, labels = [], []
    try:
        for inputs, task_ids, task_labels in batches:
            for t, model in enumerate(models):
                if model is not None:
                    out = model(**model_inputs(model, inputs))
                    logits[t].append((out.logits if hasattr(out, "logits") else out).float().cpu())
            ids.append(torch.as_tensor(task_ids).cpu())
            labels.append(torch.as_tensor(task_labels).cpu())
    finally:
        for m, mode in zip(models, modes):
            if m is not None:
                m.train(mode)
    if not ids:
        raise ValueError("no batches")
    task_logits = [torch.cat(chunks) if m is not None else None for m, chunks in zip(models, logits)]
    task_ids, all_labels = torch.cat(ids), torch.cat(labels)
    complete = all(m is not None for m in models)
    return {
        "joint": joint_accuracy(task_logits, task_ids, all_labels) if complete else None,
        "per_task": per_task_accuracy(task_logits, task_ids, all_labels),
        "per_task_by_task": per_task_breakdown(task_logits, task_ids, all_labels),
        "examples": sum(int((task_ids == t).sum()) for t, m in enumerate(models) if m is not None),
    }


def _batches(test_sets: Sequence[Dataset], batch_size: int,
             prepare: Callable[[dict], Mapping[str, Tensor]]) -> list[Batch]:
    """``(prepare(rows), task_ids, labels)`` per batch of rows of each task's test set."""
    batches = []
    for t, dataset in enumerate(test_sets):
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start:start + batch_size]
            labels = torch.tensor(list(rows["label"]), dtype=torch.long)
            batches.append((prepare(rows), torch.full_like(labels, t), labels))
    return batches


def image_batches(test_sets: Sequence[Dataset], processor: Any, batch_size: int = 256) -> list[Batch]:
    """Batches for :func:`evaluate_models` from per-task test sets (``image``/``label``
    datasets, task ``t`` = ``test_sets[t]``), preprocessed once by ``processor``."""
    return _batches(test_sets, batch_size, lambda rows: {
        "pixel_values": processor(images=list(rows["image"]), return_tensors="pt")["pixel_values"]})


def text_batches(test_sets: Sequence[Dataset], tokenizer: Any, batch_size: int = 256,
                 max_length: int = 128) -> list[Batch]:
    """Batches for :func:`evaluate_models` from per-task ``text``/``label`` test sets, tokenized
    once by ``tokenizer`` (cut to ``max_length`` tokens). Each task's texts are batched in order
    of length, so that padding per batch stays short; the scores do not depend on the order."""
    def by_length(dataset: Dataset) -> Dataset:
        ids = tokenizer(list(dataset["text"]), truncation=True, max_length=max_length)["input_ids"]
        return dataset.select(np.argsort([len(i) for i in ids], kind="stable"))

    return _batches([by_length(d) for d in test_sets], batch_size, lambda rows: dict(tokenizer(
        list(rows["text"]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")))


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return " / ".join(_cell(v, digits) for v in value)
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A markdown table of ``rows`` (dicts) over ``columns``, padded to align.

    Floats get ``digits`` decimals, ``None`` or a missing key shows as ``-``, lists are joined
    with `` / ``; numbers are right-aligned, text left-aligned.
    """
    cells = [[_cell(row.get(c), digits) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), (int, float, list, tuple)) or row.get(c) is None for row in rows)
        for c in columns
    ]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(columns), rule] + [line(r) for r in cells])

"""ZipIt's evaluation protocol: joint vs per-task accuracy, parents alone, the ensemble."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from torch import nn

from hf_mudsc.evaluation import (
    evaluate_models,
    format_table,
    image_batches,
    joint_accuracy,
    per_task_accuracy,
    per_task_breakdown,
)
from hf_mudsc.demo.parents import image_processor
from conftest import tiny_inputs, tiny_model

# Two tasks: task 0 has 2 classes, task 1 has 3. Five examples.
TASK_IDS = torch.tensor([0, 0, 1, 1, 1])
LABELS = torch.tensor([0, 1, 0, 2, 1])
LOGITS0 = torch.tensor([
    [3.0, 0.0],    # own task right (0); confident: wins jointly
    [10.0, 9.9],   # own task wrong (argmax 0, label 1)
    [10.0, 9.9],   # task 1 example: task 0 unsure
    [0.0, 5.0],    # task 1 example: task 0 confident: steals it jointly
    [0.0, 0.0],
])
LOGITS1 = torch.tensor([
    [0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0],
    [1.0, -5.0, -5.0],  # right inside task 1 (0); its softmax (0.995) beats task 0's (0.52), raw 1 < 10
    [0.0, 0.0, 1.0],    # right inside task 1 (2), softmax 0.58 < task 0's 0.99: wrong jointly
    [0.0, 0.0, 3.0],    # wrong inside task 1 (label 1)
])


def test_joint_and_per_task_differ():
    logits = [LOGITS0, LOGITS1]
    # own task: right, wrong, right, right, wrong
    assert per_task_accuracy(logits, TASK_IDS, LABELS) == pytest.approx(3 / 5)
    assert per_task_breakdown(logits, TASK_IDS, LABELS) == pytest.approx([1 / 2, 2 / 3])
    # jointly: example 0 right (0.95 vs 1/3), example 2 right only thanks to the softmax per task
    assert joint_accuracy(logits, TASK_IDS, LABELS) == pytest.approx(2 / 5)
    raw_argmax = torch.cat(logits, dim=1).argmax(1)
    assert raw_argmax[2] == 0  # without the softmax per task, example 2 would be lost


def test_joint_is_invariant_to_a_shift_of_one_task():
    logits = [LOGITS0, LOGITS1]
    shifted = [LOGITS0 + 100.0, LOGITS1]
    assert joint_accuracy(shifted, TASK_IDS, LABELS) == joint_accuracy(logits, TASK_IDS, LABELS)


def test_missing_task_logits():
    logits = [LOGITS0, None]
    assert per_task_accuracy(logits, TASK_IDS, LABELS) == pytest.approx(1 / 2)
    assert per_task_breakdown(logits, TASK_IDS, LABELS) == [pytest.approx(1 / 2), None]
    with pytest.raises(ValueError, match="every task"):
        joint_accuracy(logits, TASK_IDS, LABELS)


def test_shape_errors():
    with pytest.raises(ValueError, match="expected"):
        per_task_accuracy([LOGITS0[:4], LOGITS1], TASK_IDS, LABELS)
    with pytest.raises(ValueError, match="task ids"):
        per_task_accuracy([LOGITS0], TASK_IDS, LABELS)


class Lookup(nn.Module):
    """A 'model' whose logits for example ``i`` are row ``i`` of a table (input ``idx``)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, idx: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[idx])


def _batches(size: int = 2) -> list:
    idx = torch.arange(len(LABELS))
    return [({"idx": idx[i:i + size]}, TASK_IDS[i:i + size], LABELS[i:i + size]) for i in range(0, len(idx), size)]


def test_evaluate_ensemble_and_parents_alone():
    m0, m1 = Lookup(LOGITS0), Lookup(LOGITS1)
    ensemble = evaluate_models([m0, m1], _batches())
    assert ensemble["joint"] == pytest.approx(2 / 5)
    assert ensemble["per_task"] == pytest.approx(3 / 5)
    assert ensemble["per_task_by_task"] == pytest.approx([1 / 2, 2 / 3])
    assert ensemble["examples"] == 5

    alone0 = evaluate_models([m0, None], _batches())
    assert alone0 == {"joint": None, "per_task": pytest.approx(1 / 2), "per_task_by_task": [pytest.approx(1 / 2), None],
                      "examples": 2}
    alone1 = evaluate_models([None, m1], _batches(3))
    assert alone1["joint"] is None and alone1["per_task"] == pytest.approx(2 / 3) and alone1["examples"] == 3

    with pytest.raises(ValueError, match="no model"):
        evaluate_models([None, None], _batches())


def test_evaluate_real_models_restores_mode_and_casts_dtype():
    models = [tiny_model("vit-cls", seed=0, num_labels=2), tiny_model("vit-cls", seed=1, num_labels=3)]  # float64
    models[1].train()
    inputs = tiny_inputs(models[0], batch=5)
    inputs32 = {"pixel_values": inputs["pixel_values"].float()}
    result = evaluate_models(models, [(inputs32, TASK_IDS, LABELS)])
    with torch.no_grad():
        expected = [m.eval()(**inputs).logits for m in models]
    assert result["joint"] == joint_accuracy(expected, TASK_IDS, LABELS)
    assert result["per_task"] == per_task_accuracy(expected, TASK_IDS, LABELS)
    models[1].train()
    evaluate_models(models, [(inputs32, TASK_IDS, LABELS)])
    assert not models[0].training and models[1].training


def test_image_batches():
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    sets = [
        Dataset.from_dict({"image": [PILImage.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L")
                                     for _ in range(n)], "label": [i % 2 for i in range(n)]}, features=features)
        for n in (5, 3)
    ]
    batches = image_batches(sets, image_processor(8), batch_size=4)
    assert [len(b[1]) for b in batches] == [4, 1, 3]
    assert torch.cat([b[1] for b in batches]).tolist() == [0] * 5 + [1] * 3
    assert torch.cat([b[2] for b in batches]).tolist() == [0, 1, 0, 1, 0, 0, 1, 0]
    assert batches[0][0]["pixel_values"].shape == (4, 3, 8, 8)


def test_format_table():
    rows = [
        {"model": "ensemble", "joint": 0.81849, "per_task": [0.97, 0.98]},
        {"model": "parent 0 alone", "joint": None, "per_task": [0.97, None]},
    ]
    table = format_table(rows, ["model", "joint", "per_task", "n"])
    assert table.splitlines() == [
        "| model          | joint |      per_task | n |",
        "|:---------------|------:|--------------:|--:|",
        "| ensemble       | 0.818 | 0.970 / 0.980 | - |",
        "| parent 0 alone |     - |     0.970 / - | - |",
    ]

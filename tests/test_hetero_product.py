"""Parents of different depths and widths through the whole surface: the command line and the Python
API take them without extra flags; every output folder loads, runs in a pipeline (attention masks
included) and the card shows the layer map."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parents_on_disk import BERT_LABELS, VIT_LABELS, images, save_bert, save_image_data, save_text_data, save_vit

import hf_mudsc  # noqa: F401  (registers the joint model with the Auto classes)
from hf_mudsc import MuDSCMerger, reapply
from hf_mudsc.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::hf_mudsc.statistics.MergeQualityWarning")  # 12 samples
SHAPES = {  # parent B's overrides: parent A is the tiny default (2 layers, 32 wide, 4 heads of 8)
    "depth": dict(num_hidden_layers=3),
    "width": dict(hidden_size=48, num_attention_heads=6, intermediate_size=96),
    "both": dict(num_hidden_layers=3, hidden_size=16, num_attention_heads=2),
}
EXPECTED = {"depth": (32, 4, 64, 3), "width": (48, 6, 96, 2), "both": (32, 4, 64, 3)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"image": save_image_data(root), "text": save_text_data(root)["disk"]}


def parents(root: Path, modality: str, shape: str) -> list[Path]:
    save = save_vit if modality == "image" else save_bert
    labels = VIT_LABELS if modality == "image" else BERT_LABELS
    return [save(root / "a", 0, list(labels[0])), save(root / "b", 1, list(labels[1]), **SHAPES[shape])]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_command_line_merges_images_of_different_shapes(shape, data, tmp_path, capsys):
    from transformers import AutoModelForImageClassification, pipeline

    a, b = parents(tmp_path, "image", shape)
    out = tmp_path / "out"
    assert main(["merge", str(a), str(b), "--dataset", str(data["image"]), "--num-samples", "12",
                 "--batch-size", "4", "--method", "zipit", "--out", str(out)]) == 0
    for i, labels in enumerate(VIT_LABELS):
        config = json.loads((out / "tasks" / str(i) / "config.json").read_text())
        assert (config["hidden_size"], config["num_attention_heads"], config["intermediate_size"],
                config["num_hidden_layers"]) == EXPECTED[shape]
        pipe = pipeline("image-classification", model=str(out / "tasks" / str(i)))
        assert sorted(p["label"] for p in pipe(images(1, seed=3)[0], top_k=None)) == sorted(labels)
    joint = AutoModelForImageClassification.from_pretrained(out)
    assert joint(**pipe.preprocess(images(1, seed=3)[0])).logits.shape == (1, 5)
    card = (out / "README.md").read_text()
    recipe = json.loads((out / "merge_recipe.json").read_text())
    if shape == "width":
        assert "different widths" in card and recipe["layer_alignment"] is None
    else:
        layer_map = recipe["layer_alignment"]["layer_map"]
        assert len(layer_map) == 2 and "Layer alignment:" in card
        assert " → ".join(map(str, (0, layer_map[0]))) in card  # shallow layer 0 -> its deep partner
        assert "Training-free Heterogeneous Model Merging" in card or "2501.00061" in card


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_python_api_merges_text_of_different_shapes_and_runs_with_attention_masks(shape, data, tmp_path):
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    a, b = parents(tmp_path, "text", shape)
    result = MuDSCMerger.from_pretrained([str(a), str(b)], "mudsc", zip_budget=0.3).merge(
        load_from_disk(str(data["text"])), num_samples=12, batch_size=4, progress=False)
    out = result.save_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(out / "tasks" / "1")
    batch = tok(["the good game", "a bad law was voted by the court today"], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    for i in range(2):
        task = AutoModelForSequenceClassification.from_pretrained(out / "tasks" / str(i))
        c = task.config
        assert (c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_hidden_layers) == EXPECTED[shape]
        with torch.no_grad():
            torch.testing.assert_close(task(**batch).logits, result.task_models[i](**batch).logits, rtol=0, atol=1e-5)
    joint = AutoModelForSequenceClassification.from_pretrained(out)
    assert joint(**batch).logits.shape == (2, 5)
    assert [r["repair"] for r in result.repairs] == ["stats", "lsq", "heads"]  # the default repairs ran
    with pytest.raises(ValueError, match="was repaired after the merge .* which reapply cannot repeat"):
        reapply(out)
    if shape != "width":  # the saved layer map re-applies without data (an unrepaired merge)
        result = MuDSCMerger.from_pretrained([str(a), str(b)], "mudsc", zip_budget=0.3, repair="none").merge(
            load_from_disk(str(data["text"])), num_samples=12, batch_size=4, progress=False)
        again = reapply(result.save_pretrained(tmp_path / "unrepaired"))
        for x, y in zip(again.task_models, result.task_models):
            with torch.no_grad():
                torch.testing.assert_close(x(**batch).logits, y(**batch).logits, rtol=0, atol=1e-6)

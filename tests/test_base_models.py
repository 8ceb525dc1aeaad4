"""Parents without task heads (e.g. sentence-embedding BERTs): a full merge is one standard model."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from conftest import tiny_inputs, tiny_model
from hf_mudsc import MuDSCMerger, reapply


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("base-parents")
    paths = []
    for seed in (0, 1):
        model = tiny_model("bert-base", seed=seed, dtype=torch.float32)
        model.save_pretrained(root / f"p{seed}")
        paths.append(str(root / f"p{seed}"))
    return paths


def _batches(folders):
    model = tf.AutoModel.from_pretrained(folders[0])
    return [tiny_inputs(model, batch=8, seed=s) for s in range(3)]


def test_full_merge_of_base_models_saves_one_standard_model(folders, tmp_path):
    result = MuDSCMerger.from_pretrained(folders, "zipit").merge(_batches(folders), progress=False)
    assert result.model is result.task_models[0]
    assert type(result.model) is tf.BertModel
    out = result.save_pretrained(tmp_path / "merged")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    loaded = tf.AutoModel.from_pretrained(out).eval()
    inputs = tiny_inputs(loaded)
    with torch.no_grad():
        expected = result.model.eval()(**inputs).last_hidden_state
        assert torch.allclose(loaded(**inputs).last_hidden_state, expected, atol=1e-6)
    assert (out / "tasks" / "1" / "config.json").is_file()


def test_partial_merge_of_base_models_saves_one_model_per_parent(folders, tmp_path):
    result = MuDSCMerger.from_pretrained(folders, "zipit", merge_layers=1).merge(_batches(folders), progress=False)
    with pytest.raises(ValueError, match="one model per parent"):
        _ = result.model
    out = result.save_pretrained(tmp_path / "partial")
    assert not (out / "config.json").exists()
    for i in (0, 1):
        task = tf.AutoModel.from_pretrained(out / "tasks" / str(i))
        for name, tensor in result.task_models[i].state_dict().items():
            assert torch.equal(task.state_dict()[name], tensor), name
    again = reapply(out)
    for a, b in zip(again.task_models, result.task_models):
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_cards_say_how_to_load_what_the_folder_holds(folders, tmp_path):
    merger = MuDSCMerger.from_pretrained(folders, "zipit")
    merger.collect(_batches(folders), progress=False)
    full = merger.merge(progress=False).save_pretrained(tmp_path / "full")
    partial = merger.merge(progress=False, merge_layers=1).save_pretrained(tmp_path / "partial")
    assert "AutoModel.from_pretrained" in (full / "README.md").read_text()
    assert "joint" not in (full / "README.md").read_text().split("## How to load")[1]
    assert "AutoModel" not in (partial / "README.md").read_text().split("## How to load")[1]
    assert "joint" not in (partial / "tasks" / "0" / "README.md").read_text().split("## How to load")[1]

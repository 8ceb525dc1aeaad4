"""What DistilBERT and ELECTRA add to the encoder table: DistilBERT's FFN width under another config
field (``hidden_dim``) and its head of two maps (``pre_classifier``, then ``classifier``), ELECTRA-small's
embeddings narrower than its layers (a merge space of their own, projected into the residual stream).
The shared exactness tests (a permuted copy merges back, a self-merge is the identity, every repair,
the joint model) run these families too (``conftest.TINY``)."""
from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import outputs, tiny_inputs, tiny_model

import hf_mudsc  # noqa: F401  (registers the joint model with the Auto classes)
from hf_mudsc import MuDSCMerger
from hf_mudsc.cli import main
from hf_mudsc.loading import ParentError
from hf_mudsc.repair.ridge import RidgeSums
from parents_on_disk import save_bert, save_text_data

ALL = ("stats", "lsq", "heads")


def calibration(model, n=4, size=8):
    return [tiny_inputs(model, batch=size, seed=200 + i) for i in range(n)]


def widened_distilbert(original: torch.nn.Module, extra: int = 24, seed: int = 7) -> torch.nn.Module:
    """``original`` with ``extra`` FFN units that read at random and write zeros: the same function."""
    wide = tiny_model("distilbert-seq", seed=seed, intermediate_size=original.config.hidden_dim + extra)
    old = dict(original.named_parameters())
    with torch.no_grad():
        for name, p in wide.named_parameters():
            src = old[name]
            if name.endswith(("ffn.lin1.weight", "ffn.lin1.bias")):
                p[: src.shape[0]] = src
            elif name.endswith("ffn.lin2.weight"):
                p.zero_()
                p[:, : src.shape[1]] = src
            else:
                p.copy_(src)
    return wide


def test_a_distilbert_widened_in_its_ffn_merges_back_with_the_wider_hidden_dim():
    """The merged config's FFN width is DistilBERT's ``hidden_dim`` (setting ``intermediate_size``, as
    for BERT, left the merged model built at the first parent's width: a state dict of other shapes)."""
    original = tiny_model("distilbert-seq", seed=4)
    wide = widened_distilbert(original)
    x = tiny_inputs(original)
    torch.testing.assert_close(outputs(wide, x), outputs(original, x), rtol=0, atol=1e-12)
    result = MuDSCMerger.from_pretrained([original, wide], "mudsc", repair=ALL).merge(calibration(original),
                                                                                      progress=False)
    assert all(r["maps"] > 0 for r in result.repairs)
    for task in result.task_models:
        assert (task.config.dim, task.config.hidden_dim) == (32, 88)
        torch.testing.assert_close(outputs(task, x), outputs(original, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("narrow", [dict(hidden_size=16, num_attention_heads=2, intermediate_size=40),
                                    dict(num_hidden_layers=3)])
def test_distilberts_of_different_widths_or_depths(narrow):
    a, b = tiny_model("distilbert-seq", seed=0), tiny_model("distilbert-seq", seed=1, num_labels=2, **narrow)
    result = MuDSCMerger.from_pretrained([a, b]).merge(calibration(a), progress=False)
    assert [r["repair"] for r in result.repairs] == list(ALL) and all(r["maps"] > 0 for r in result.repairs)
    depth = narrow.get("num_hidden_layers", 2)
    for task in result.task_models:
        c = task.config
        assert (c.dim, c.n_heads, c.hidden_dim, c.n_layers) == (32, 4, 64, depth)
        assert task.pre_classifier.weight.shape == (32, 32)  # the narrower head widened with zero units
        assert torch.isfinite(outputs(task, tiny_inputs(task))).all()
    assert result.model(**tiny_inputs(a)).logits.shape == (4, 5)


def test_electra_small_embeddings_are_a_space_of_their_own_and_take_the_wider_width():
    a = tiny_model("electra-small", seed=0)
    b = tiny_model("electra-small", seed=1, embedding_size=16)
    merger = MuDSCMerger.from_pretrained([a, b])
    assert merger.parents[0].unit_map["embeddings"].dim == 24
    result = merger.merge(calibration(a), progress=False)
    assert result.transforms["embeddings"].sizes() == [24, 16]
    for task in result.task_models:
        assert (task.config.embedding_size, task.config.hidden_size) == (24, 32)
        assert torch.isfinite(outputs(task, tiny_inputs(task))).all()


def test_lsq_refits_the_embedding_projection_before_the_layers_that_read_it():
    """The projection runs before the first layer: it is refitted first, and layer 0's query map is then
    the ridge solution on the refitted projection's outputs (it was refitted after the encoder, with the
    maps outside every layer, which changed layer 0's inputs under its corrections)."""
    a, b = tiny_model("electra-small", seed=0), tiny_model("electra-small", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "mudsc")
    calib = calibration(a)
    plain = merger.merge(calib, repair="none", progress=False)
    repaired = merger.merge(calib, repair="lsq", progress=False)
    assert repaired.repairs[0]["maps"] == 1 + 2 * 6  # the projection, six maps a layer
    projection, query = "electra.embeddings_project", "electra.encoder.layer.0.attention.self.query"
    assert not torch.equal(repaired.weights.shared[f"{projection}.weight"],
                           plain.weights.shared[f"{projection}.weight"])
    sums = RidgeSums(bias=True)
    merged, qk = repaired.task_models[0], repaired.transforms["layer.0.qk"]
    for batch in calib:
        real = batch["attention_mask"].bool()
        seen = {}
        hooks = [m.get_submodule(query).register_forward_hook(
            lambda mod, args, out, key=key: seen.__setitem__(key, (args[0][real], out[real])))
            for key, m in (("merged", merged), (0, a), (1, b))]
        with torch.no_grad():
            for m in (merged, a, b):
                m(**batch)
        for h in hooks:
            h.remove()
        sums.update(seen["merged"][0], sum(qk.merge(seen[i][1], i, 1) for i in (0, 1)))
    weight, bias = sums.solve(plain.weights.shared[f"{query}.weight"], plain.weights.shared[f"{query}.bias"])
    torch.testing.assert_close(repaired.weights.shared[f"{query}.weight"], weight.to(torch.float64), rtol=0, atol=1e-8)
    torch.testing.assert_close(repaired.weights.shared[f"{query}.bias"], bias.to(torch.float64), rtol=0, atol=1e-8)


def test_distilbert_folders_merge_from_the_command_line_into_pipelines(tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    from hf_mudsc.joint_model import MuDSCJointModel

    labels = (["negative", "positive"], ["sports", "politics", "science"])
    parents = [save_bert(tmp_path / f"distil{i}", seed=i, labels=list(labels[i]), kind="distilbert-seq")
               for i in range(2)]
    data = save_text_data(tmp_path / "data", n=16)["disk"]
    out = tmp_path / "merged"
    assert main(["merge", *map(str, parents), "--dataset", str(data), "--batch-size", "4", "--out", str(out)]) == 0
    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert recipe["config"]["resolved_repair"] == list(ALL)
    for i, names in enumerate(labels):
        pipe = pipeline("text-classification", model=str(out / "tasks" / str(i)))
        assert type(pipe.model).__name__ == "DistilBertForSequenceClassification"
        assert sorted(p["label"] for p in pipe("the good game", top_k=None)) == sorted(names)
    joint = AutoModelForSequenceClassification.from_pretrained(out)
    assert isinstance(joint, MuDSCJointModel) and joint.config.num_labels == 5


def test_electras_without_projection_of_different_widths_merge_at_the_wider_embedding_size():
    """ELECTRA-base-like parents (embeddings as wide as the layers): the embedding width follows the merged
    hidden size (it stayed the narrower parent's: a traceback, 'size mismatch for word_embeddings')."""
    a = tiny_model("electra-small", seed=0, embedding_size=32)
    b = tiny_model("electra-small", seed=1, embedding_size=48, hidden_size=48, num_attention_heads=6)
    assert "embeddings" not in MuDSCMerger.from_pretrained([a, a]).parents[0].unit_map
    result = MuDSCMerger.from_pretrained([a, b]).merge(calibration(a), progress=False)
    for task in result.task_models:
        assert (task.config.hidden_size, task.config.embedding_size) == (48, 48)
        assert not hasattr(task.electra, "embeddings_project")
        assert torch.isfinite(outputs(task, tiny_inputs(task))).all()


def test_widths_whose_merge_drops_the_embedding_projection_are_refused_up_front():
    """Embeddings 48 wide over 32-wide layers, and 24 over 48: at the widest widths both are 48, and
    transformers builds no projection (refused after the statistics and the solve, naming the weights)."""
    a = tiny_model("electra-small", seed=0, embedding_size=48)
    b = tiny_model("electra-small", seed=1, embedding_size=24, hidden_size=48, num_attention_heads=6)
    with pytest.raises(ParentError, match=r"^parents of different widths cannot be merged: at the widest widths "
                                          r"\(hidden_size=48, intermediate_size=64, embedding_size=48\) the merged "
                                          r"ElectraForSequenceClassification has no 'electra.embeddings_project.bias'"):
        MuDSCMerger.from_pretrained([a, b])


def test_electra_parents_of_which_one_projects_its_embeddings_are_refused_saying_so():
    a, b = tiny_model("electra-small", seed=0), tiny_model("electra-small", seed=1, embedding_size=32)
    with pytest.raises(ParentError, match=r"differ in structure: .*embedding_size < hidden_size"):
        MuDSCMerger.from_pretrained([a, b])


def test_an_electra_multiple_choice_head_is_refused_not_merged_as_its_base_model():
    """No unit map covers ELECTRA's multiple-choice head (its sequence summary), so it fell back to the
    base model with a warning: merged, though multiple-choice heads are refused."""
    model = tiny_model("electra-small")
    choice = transformers.ElectraForMultipleChoice(model.config)
    with pytest.raises(ParentError, match="has a multiple-choice head, which is not supported"):
        MuDSCMerger.from_pretrained([choice, choice])

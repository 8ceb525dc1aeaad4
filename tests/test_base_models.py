"""Parents without task heads (e.g. sentence-embedding BERTs): a full merge is one standard model."""
from __future__ import annotations

import json
from pathlib import Path

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


def _saved(model: torch.nn.Module, folder) -> str:
    model.save_pretrained(folder)
    return str(folder)


SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=99)


@pytest.mark.parametrize("config,classes", [
    (tf.BertConfig(**SHAPE, intermediate_size=64), ("BertForMaskedLM", "BertForPreTraining")),
    (tf.ElectraConfig(**SHAPE, intermediate_size=64, embedding_size=16),
     ("ElectraForPreTraining", "ElectraForMaskedLM")),
    (tf.DistilBertConfig(**SHAPE, hidden_dim=64), ("DistilBertForMaskedLM",)),
], ids=["bert", "electra", "distilbert"])
def test_pretraining_checkpoints_merge_as_their_base_models(config, classes, tmp_path):
    """A masked-LM or pretraining checkpoint (as bert-base-uncased, roberta-base, the MultiBERTs and
    ELECTRA's discriminators are saved) is merged as its base model, with a warning that its head is not
    (was refused: 'not covered by the unit map, register a unit map'); a self-merge gives back the
    encoder's outputs."""
    for name in classes:
        cls = getattr(tf, name)
        torch.manual_seed(0)
        folder = _saved(cls(config).eval(), tmp_path / name)
        with pytest.warns(UserWarning, match=f"is an? {name}, whose head is not merged: its base model"):
            merger = MuDSCMerger.from_pretrained([folder, folder], "zipit")
        base = type(cls.from_pretrained(folder).base_model)
        assert all(type(p.model) is base for p in merger.parents)
        result = merger.merge(_batches([folder]), progress=False)
        inputs = tiny_inputs(result.model)
        with torch.no_grad():
            expected = cls.from_pretrained(folder).eval().base_model(**inputs).last_hidden_state
            torch.testing.assert_close(result.model.eval()(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)
        out = result.save_pretrained(tmp_path / f"merged-{name}")
        assert json.loads((out / "config.json").read_text())["architectures"] == [base.__name__]


def test_a_base_model_saved_without_its_pooler_is_a_parent(tmp_path):
    """BertModel(add_pooling_layer=False), as sentence encoders are saved: was refused as a checkpoint
    lacking the pooler's weights."""
    torch.manual_seed(0)
    folder = _saved(tf.BertModel(tiny_model("bert-base").config, add_pooling_layer=False), tmp_path / "nopool")
    merger = MuDSCMerger.from_pretrained([folder, folder], "zipit")
    assert merger.parents[0].model.pooler is None
    result = merger.merge(_batches([folder]), progress=False)
    assert result.model.pooler is None


def test_a_classifier_whose_config_names_no_architecture_is_refused(tmp_path):
    """transformers would load it as a bare BertModel and drop its classifier (the merge went on)."""
    from hf_mudsc.loading import ParentError

    folder = _saved(tiny_model("bert-seq", dtype=torch.float32), tmp_path / "noarch")
    config = json.loads((tmp_path / "noarch" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "noarch" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ParentError, match=r"weights that BertModel does not use \(e.g. classifier.bias.*names no "
                                          r"architecture: add its class"):
        MuDSCMerger.from_pretrained([folder, folder], "zipit")


def _sentence_encoder(folder, seed: int, pooling: str = "mean", dense: bool = False, **shape):
    """A tiny sentence-transformers model saved as the library saves it (encoder at the top,
    1_Pooling/, Normalize), from a random BERT and a WordPiece tokenizer."""
    st = pytest.importorskip("sentence_transformers")
    from parents_on_disk import tokenizer
    from sentence_transformers import models  # moved in sentence-transformers 6, still importable

    bert = tiny_model("bert-base", seed=seed, dtype=torch.float32, **shape)
    bert.save_pretrained(folder / "bert")
    tokenizer().save_pretrained(folder / "bert")
    modules = [models.Transformer(str(folder / "bert")), models.Pooling(bert.config.hidden_size, pooling)]
    if dense:
        modules.append(models.Dense(32, 8))
    st.SentenceTransformer(modules=[*modules, models.Normalize()], device="cpu").save(str(folder / "st"))
    return str(folder / "st")


def test_sentence_encoders_keep_their_pooling_and_normalisation(tmp_path):
    """A merge of sentence-transformers models carries their modules.json, pooling config and
    settings (without them SentenceTransformer read the folder with mean pooling and no Normalize:
    embeddings of norm ~6 from all-MiniLM-L6-v2); a self-merge embeds as its parent does."""
    import sentence_transformers as st

    a = _sentence_encoder(tmp_path / "a", seed=0, pooling="cls")
    texts = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9"]
    result = MuDSCMerger.from_pretrained([a, a], "zipit").merge(texts * 8, progress=False)
    out = result.save_pretrained(tmp_path / "merged")
    for folder in (out, out / "tasks" / "0", out / "tasks" / "1"):
        assert (folder / "1_Pooling" / "config.json").read_bytes() == Path(a, "1_Pooling", "config.json").read_bytes()
        merged = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
        expected = st.SentenceTransformer(a, device="cpu").encode(texts, convert_to_tensor=True)
        torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
        assert torch.allclose(merged.norm(dim=1), torch.ones(3))


def test_sentence_encoders_of_different_widths_state_the_merged_width(tmp_path):
    """The pooling config of each folder states the merged width (a narrower parent's stated its own while
    the model gave wider embeddings), so the parents' files agree and the top folder keeps them (it had
    none: no Normalize)."""
    import sentence_transformers as st

    narrow = _sentence_encoder(tmp_path / "n", seed=0, hidden_size=16, num_attention_heads=2)
    wide = _sentence_encoder(tmp_path / "w", seed=1)
    texts = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9"]
    out = MuDSCMerger.from_pretrained([narrow, wide], "zipit").merge(texts * 8, progress=False).save_pretrained(
        tmp_path / "merged")
    for folder in (out, out / "tasks" / "0", out / "tasks" / "1"):
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        assert pooling.get("embedding_dimension", pooling.get("word_embedding_dimension")) == 32
        model = st.SentenceTransformer(str(folder), device="cpu")
        embeddings = model.encode(texts, convert_to_tensor=True)
        assert model.get_sentence_embedding_dimension() == embeddings.shape[1] == 32
        assert torch.allclose(embeddings.norm(dim=1), torch.ones(3))


def test_sentence_encoders_with_weights_in_a_module_or_other_pooling_are_not_given_it(tmp_path):
    """A Dense module's weights are in its parent's frame: no module files (the encoder alone); parents
    pooling differently: each task folder its own parent's, the merged model none."""
    dense = _sentence_encoder(tmp_path / "dense", seed=0, dense=True)
    out = MuDSCMerger.from_pretrained([dense, dense], "weight-matching").merge(progress=False).save_pretrained(
        tmp_path / "dense-merged")
    assert not any((f / "modules.json").exists() for f in (out, out / "tasks" / "0"))
    mean, cls = _sentence_encoder(tmp_path / "m", seed=0), _sentence_encoder(tmp_path / "c", seed=1, pooling="cls")
    out = MuDSCMerger.from_pretrained([mean, cls], "weight-matching").merge(progress=False).save_pretrained(
        tmp_path / "mixed")
    assert not (out / "modules.json").exists()
    for i, parent in enumerate((mean, cls)):
        assert (out / "tasks" / str(i) / "1_Pooling" / "config.json").read_bytes() == Path(
            parent, "1_Pooling", "config.json").read_bytes()


def test_classifiers_encoders_merge_as_the_class_asked_for_and_reapply_alike(tmp_path):
    """model_class loads each parent as that class (the encoder of a classifier; a masked-LM checkpoint
    without its pooler); the recipe records the classes as merged and reapply loads them so (a merge
    of classifiers' encoders loaded in Python was refused at reapply: 'its weights differ')."""
    from hf_mudsc.cli import main
    from hf_mudsc.loading import ParentError

    folders = [_saved(tiny_model("bert-seq", seed=s, dtype=torch.float32), tmp_path / f"cls{s}") for s in (0, 1)]
    torch.manual_seed(0)
    mlm = _saved(tf.BertForMaskedLM(tiny_model("bert-seq").config).eval(), tmp_path / "mlm")
    for parents in (folders, [mlm, mlm]):
        merger = MuDSCMerger.from_pretrained(parents, "weight-matching", model_class="BertModel")
        assert all(type(p.model) is tf.BertModel for p in merger.parents)
        out = merger.merge(progress=False).save_pretrained(tmp_path / f"merged-{len(list(tmp_path.iterdir()))}")
        assert json.loads((out / "merge_recipe.json").read_text())["parents_class"] == ["BertModel", "BertModel"]
        again = reapply(out)
        assert all(type(p.model) is tf.BertModel for p in again.parents)
        assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                     tf.AutoModel.from_pretrained(out).state_dict().values()))
    loaded = [tf.BertModel.from_pretrained(f) for f in folders]  # in Python, then re-applied from the folders
    out = MuDSCMerger.from_pretrained(loaded, "weight-matching").merge(progress=False).save_pretrained(tmp_path / "api")
    assert main(["apply", str(out), "--out", str(tmp_path / "api-again")]) == 0
    with pytest.raises(ParentError, match="'Bert' is not a transformers model class"):
        MuDSCMerger.from_pretrained(folders, "weight-matching", model_class="Bert")
    with pytest.raises(ParentError, match="is a loaded BertModel, not the model class BertForSequenceClassification"):
        MuDSCMerger.from_pretrained(loaded, "weight-matching", model_class="BertForSequenceClassification")
    with pytest.raises(ValueError, match="model_class gives 3 values for 2 parents"):
        MuDSCMerger.from_pretrained(folders, "weight-matching", model_class=["BertModel"] * 3)
    assert main(["merge", *folders, "--method", "weight-matching", "--model-class", "BertModel",
                 "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["architectures"] == ["BertModel"]

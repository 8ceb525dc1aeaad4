"""The Python surface end to end, on parents saved as folders (DESIGN §1, §3.6):
``MuDSCMerger.from_pretrained([dirA, dirB])`` -> ``merge(data)`` -> ``save_pretrained`` / ``push_to_hub``,
and what a user does with the folder afterwards (pipelines, Auto classes, ``reapply``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, constants

import hf_mudsc  # noqa: F401  (registers the joint model with the Auto classes)
from hf_mudsc import MuDSCMerger, reapply
from hf_mudsc.io.writer import OutputError
from hf_mudsc.transforms import load_transforms
from hub_server import FakeHub
from parents_on_disk import (
    BERT_LABELS,
    VIT_LABELS,
    all_weight_bytes,
    assert_weights_close,
    bert_parents,
    image_dataset,
    images,
    text_dataset,
    tree,
    vit_parents,
)

TOKEN = "hf_" + "ProductToken0123456789" * 2
N, BS = 12, 4  # calibration examples, batch size
SETTINGS = {"image": dict(method="mudsc", alpha=0.5, max_sweeps=2), "text": dict(method="zipit", zip_budget=0.2)}
PIPELINE = {"image": "image-classification", "text": "text-classification"}
LABELS = {"image": VIT_LABELS, "text": BERT_LABELS}


@pytest.fixture(scope="module")
def parents(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("parents")
    return {"image": vit_parents(root), "text": bert_parents(root)}


def make_data(modality: str, n: int = N):
    return image_dataset(n) if modality == "image" else text_dataset(n)


def new_merger(parents, modality: str) -> MuDSCMerger:
    return MuDSCMerger.from_pretrained([str(p) for p in parents[modality]], **SETTINGS[modality])


@pytest.fixture(scope="module")
def merged(parents, tmp_path_factory) -> dict[str, tuple]:
    """(result, saved folder) per modality, merged from a datasets.Dataset."""
    out = {}
    for modality in ("image", "text"):
        result = new_merger(parents, modality).merge(make_data(modality), num_samples=N, batch_size=BS, progress=False)
        folder = tmp_path_factory.mktemp(f"merged-{modality}") / "out"
        result.save_pretrained(folder)
        out[modality] = (result, folder)
    return out


def result_bytes(result) -> list[dict[str, bytes]]:
    return [{k: v.contiguous().numpy().tobytes() for k, v in result.weights.task_state_dict(i).items()}
            for i in range(len(result.parents))]


def loaded_bytes(folder: Path) -> dict[str, bytes]:
    """A saved task model's parameters, by their in-memory names (transformers 5 renames some
    tensors between the checkpoint and the module tree, e.g. ViT's ``encoder.layer`` -> ``layers``)."""
    import transformers

    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(folder)
    return {n: p.detach().contiguous().numpy().tobytes() for n, p in model.named_parameters()}


def tensors(data: bytes) -> dict[str, bytes]:
    """The tensors of a safetensors file's bytes, as raw bytes."""
    from safetensors.torch import load

    return {k: v.numpy().tobytes() for k, v in load(data).items()}


def ready_batches(parents, modality: str):
    """The calibration data as a DataLoader of model inputs prepared by the parents' own processor."""
    from transformers import AutoImageProcessor, AutoTokenizer

    data = make_data(modality)
    rows = data[data.column_names[0]]
    if modality == "image":
        proc = AutoImageProcessor.from_pretrained(parents["image"][0])

        def collate(xs):
            return {"pixel_values": proc(xs, return_tensors="pt")["pixel_values"]}
    else:
        tok = AutoTokenizer.from_pretrained(parents["text"][0])

        def collate(xs):
            return dict(tok(xs, padding=True, truncation=True, max_length=128, return_tensors="pt"))
    return torch.utils.data.DataLoader(rows, batch_size=BS, collate_fn=collate)


# --------------------------------------------------------------------------- calibration inputs
@pytest.mark.parametrize("modality", ["image", "text"])
def test_dataset_iterable_dataset_and_ready_batches_give_the_same_merge(parents, merged, modality):
    reference, _ = merged[modality]
    assert reference.calibration["num_samples"] == N and reference.calibration["column"] == (
        "image" if modality == "image" else "text")
    samples = reference.calibration["samples_per_space"]
    assert samples["pooler" if modality == "text" else "residual"] > 0
    iterable = make_data(modality).to_iterable_dataset()
    loader = ready_batches(parents, modality)
    listed = list(ready_batches(parents, modality))
    for data in (iterable, loader, listed):
        merger = new_merger(parents, modality)
        result = merger.merge(data, num_samples=N, batch_size=BS, progress=False)
        assert result.calibration["samples_per_space"] == samples
        if not reference.config.resolved_repair:
            assert result_bytes(result) == result_bytes(reference), type(data).__name__
            continue
        # the repairs' float64 sums run over the rows in the order each source yields them, and
        # float32 kernels on batches of other shapes round differently with several threads: the
        # solve is byte-identical, the repaired weights equal to rounding (about 5e-6 of each
        # tensor's largest entry measured with 2 threads; other data moves them by percents)
        assert all(torch.equal(result.transforms[n].assign[i], reference.transforms[n].assign[i])
                   for n in reference.transforms for i in range(2)), type(data).__name__
        for i in range(2):
            assert_weights_close(result.weights.task_state_dict(i), reference.weights.task_state_dict(i), 1e-4)


def test_merge_uses_only_num_samples_examples(parents, merged):
    from hf_mudsc.data import calibration

    longer = text_dataset(N + 8)
    result = new_merger(parents, "text").merge(longer, num_samples=N, batch_size=BS, progress=False)
    assert result.calibration["samples_per_space"]["pooler"] == N  # one pooler sample per example
    drawn = calibration(longer, object(), "text", num_samples=N, batch_size=BS, column="text").indices  # the recipe's seed
    assert sorted(drawn) != list(range(N))  # a random draw, not the first rows
    again = new_merger(parents, "text").merge(longer.select(drawn), num_samples=N, batch_size=BS, progress=False)
    assert result_bytes(again) == result_bytes(result)
    other = new_merger(parents, "text").merge(longer, num_samples=N + 8, batch_size=BS, progress=False)
    assert other.calibration["samples_per_space"]["pooler"] == N + 8


# --------------------------------------------------------------------------- the saved folder
@pytest.mark.parametrize("modality", ["image", "text"])
def test_task_folders_run_in_pipelines_with_their_parents_labels(merged, modality):
    from transformers import pipeline

    result, out = merged[modality]
    inputs = images(3, seed=11) if modality == "image" else ["the good game", "a bad law was voted", "love the song"]
    for i, labels in enumerate(LABELS[modality]):
        folder = out / "tasks" / str(i)
        assert loaded_bytes(folder) == result_bytes(result)[i]
        pipe = pipeline(PIPELINE[modality], model=str(folder))
        predictions = pipe(inputs, top_k=None)
        assert [sorted(p["label"] for p in pred) for pred in predictions] == [sorted(labels)] * 3
        # the pipeline's scores are the merged task model's softmax
        model = result.task_models[i]
        with torch.no_grad():
            probs = F.softmax(model(**pipe.preprocess(inputs[0])).logits.float(), -1)[0]
        got = {p["label"]: p["score"] for p in predictions[0]}
        assert [got[labels[j]] for j in range(len(labels))] == pytest.approx(probs.tolist(), abs=1e-5)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_joint_folder_loads_with_the_auto_class_and_predicts_the_union(merged, modality):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, pipeline

    from hf_mudsc.joint_model import MuDSCJointModel

    result, out = merged[modality]
    auto = AutoModelForImageClassification if modality == "image" else AutoModelForSequenceClassification
    joint = auto.from_pretrained(out)
    assert isinstance(joint, MuDSCJointModel)
    union = [label for labels in LABELS[modality] for label in labels]
    assert [joint.config.id2label[j] for j in range(len(union))] == union
    pipe = pipeline(PIPELINE[modality], model=str(out))
    x = images(1, seed=5)[0] if modality == "image" else "we like the new film"
    assert sorted(p["label"] for p in pipe(x, top_k=None)) == sorted(union)
    # joint logits: each task's log-softmax, in task order
    batch = pipe.preprocess(x)
    with torch.no_grad():
        logits = joint(**batch).logits[0]
        expected = torch.cat([F.log_softmax(m(**batch).logits[0], -1) for m in result.task_models])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_folder_holds_safetensors_recipe_transforms_and_processors(parents, merged, modality):
    result, out = merged[modality]
    files = set(tree(out))
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    processor = "preprocessor_config.json" if modality == "image" else "tokenizer_config.json"
    for prefix in ("", "tasks/0/", "tasks/1/"):
        assert {prefix + "config.json", prefix + "model.safetensors", prefix + "README.md", prefix + processor} <= files
    assert {"merge_recipe.json", "merge_transforms.safetensors"} <= files
    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert recipe["parents"] == [str(Path(p).resolve()) for p in parents[modality]]  # found from any folder
    assert recipe["config"]["method"] == SETTINGS[modality]["method"]
    assert recipe["calibration"]["num_samples"] == N
    saved = load_transforms(str(out / "merge_transforms.safetensors"))
    assert saved.keys() == result.transforms.keys()
    for name, t in result.transforms.items():
        assert saved[name].k == t.k and all(torch.equal(a, b) for a, b in zip(saved[name].assign, t.assign))


@pytest.mark.parametrize("modality", ["image", "text"])
def test_model_cards(merged, modality):
    result, out = merged[modality]
    method = SETTINGS[modality]["method"]
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model_relation"] == "merge"
    assert {"merge", "mudsc", method} <= set(data["tags"])
    assert data["pipeline_tag"] == PIPELINE[modality]
    assert data["library_name"] == "transformers"
    assert "tasks/0" in card.text and "tasks/1" in card.text and "Calibration data" in card.text
    for i in range(2):
        task_card = ModelCard.load(out / "tasks" / str(i) / "README.md")
        assert task_card.data.base_model_relation == "merge" and task_card.data.pipeline_tag == PIPELINE[modality]
        assert f"Task {i} of a merge" in task_card.text


def test_small_shards_give_several_files_and_an_index_that_load(merged, tmp_path):
    from transformers import AutoModelForImageClassification, ViTForImageClassification

    result, out = merged["image"]
    sharded = result.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    for folder in (sharded, sharded / "tasks" / "0"):
        shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
        assert len(shards) > 2 and (folder / "model.safetensors.index.json").is_file()
        assert not (folder / "model.safetensors").exists()
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == set(shards)
    assert all_weight_bytes(sharded) == all_weight_bytes(out)
    task = ViTForImageClassification.from_pretrained(sharded / "tasks" / "1")
    joint = AutoModelForImageClassification.from_pretrained(sharded)
    state = result.weights.task_state_dict(1)
    assert all(torch.equal(p, state[n]) for n, p in task.named_parameters())
    head = result.weights.task_state_dict(0)["classifier.weight"]
    assert torch.equal(joint.model.get_parameter("classifier.weight"), head)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_reapply_gives_byte_identical_weights(parents, merged, tmp_path, modality):
    result, out = merged[modality]
    if result.config.resolved_repair:  # mudsc's default repairs ran on data: reapply cannot repeat them
        with pytest.raises(ValueError, match="was repaired after the merge .* which reapply cannot repeat"):
            reapply(out)
        result = new_merger(parents, modality).merge(make_data(modality), num_samples=N, batch_size=BS,
                                                     progress=False, repair="none")
        out = result.save_pretrained(tmp_path / "unrepaired")
    again = reapply(out)
    assert result_bytes(again) == result_bytes(result)
    folder = again.save_pretrained(tmp_path / "again")
    assert all_weight_bytes(folder) == all_weight_bytes(out)
    # same tensors; not the same bytes: safetensors writes a header's several metadata keys in random order
    transforms = "merge_transforms.safetensors"
    assert tensors((folder / transforms).read_bytes()) == tensors((out / transforms).read_bytes())


def test_in_memory_parents_bring_their_processor_and_reapply_refuses_other_weights(parents, tmp_path):
    """Parents loaded in Python carry the tokenizer saved where they came from (a dataset was refused:
    "the parents have no tokenizer"); a merge of parents changed in memory is not re-applied to the
    folders' weights (it was, silently: other weights than the saved merge), and one of unchanged
    parents is."""
    from transformers import AutoModelForSequenceClassification

    models = [AutoModelForSequenceClassification.from_pretrained(p) for p in parents["text"]]
    merger = MuDSCMerger.from_pretrained(models, "zipit")
    assert all(p.processor is not None for p in merger.parents)
    first = merger.merge(make_data("text"), num_samples=N, batch_size=BS, progress=False)
    assert result_bytes(reapply(first.save_pretrained(tmp_path / "kept"))) == result_bytes(first)
    with torch.no_grad():
        models[1].classifier.weight.add_(1.0)  # e.g. trained further in this session
    changed = MuDSCMerger.from_pretrained(models, "zipit").merge(make_data("text"), num_samples=N, batch_size=BS,
                                                                 progress=False).save_pretrained(tmp_path / "changed")
    with pytest.raises(ValueError, match=r"parent 1 \('.*'\) is not the model that was merged"):
        reapply(changed)


# --------------------------------------------------------------------------- refusals
def test_saving_over_a_non_empty_folder_is_refused_and_leaves_it_untouched(merged, tmp_path):
    result, _ = merged["text"]
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "model.safetensors").write_bytes(b"old weights")
    before = tree(target)
    with pytest.raises(OutputError, match="not empty"):
        result.save_pretrained(target)
    assert tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary folder left beside it
    result.save_pretrained(target, overwrite=True)
    assert "notes.txt" not in tree(target) and loaded_bytes(target / "tasks" / "0") == result_bytes(result)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_saving_into_a_parents_folder_is_refused(parents, merged):
    result, _ = merged["image"]
    parent = parents["image"][1]
    before = tree(parent)
    for target in (parent, parent / "merged", parent.parent):
        with pytest.raises(OutputError, match="input folder"):
            result.save_pretrained(target, overwrite=True)
    assert tree(parent) == before
    assert not any(p.name.startswith(".") for p in parent.parent.iterdir())


# --------------------------------------------------------------------------- the Hub
@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)  # huggingface_hub's own side requests stay local
        yield server


def test_push_to_hub_is_one_commit_with_card_weights_and_config(merged, hub, caplog):
    result, out = merged["text"]
    url = result.push_to_hub("me/merged", token=TOKEN, endpoint=hub.url)
    assert url.startswith(f"{hub.url}/me/merged/commit/")
    assert len(hub.commits) == 1
    files = hub.commits[0].files
    assert {"README.md", "config.json", "model.safetensors", "merge_recipe.json", "merge_transforms.safetensors",
            "tasks/0/model.safetensors", "tasks/1/config.json", "tasks/1/README.md"} <= files.keys()
    assert files.keys() == tree(out).keys()
    local = tree(out)
    assert {k: files[k] for k in files if k.endswith("model.safetensors")} == {
        k: local[k] for k in local if k.endswith("model.safetensors")}
    assert tensors(files["merge_transforms.safetensors"]) == tensors(local["merge_transforms.safetensors"])
    assert ModelCard(files["README.md"].decode()).data.base_model_relation == "merge"
    posts = [r for r in hub.requests if r.method == "POST"]  # repo calls (a GET registry fetch carries no token)
    assert posts and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in posts)
    assert all(r.headers.get("authorization") in (None, f"Bearer {TOKEN}") for r in hub.requests)
    assert not any(TOKEN.encode() in content for content in files.values())
    assert TOKEN not in caplog.text


def test_sentence_pair_columns_are_found_and_tokenized_as_pairs(tmp_path):
    from datasets import Dataset

    from hf_mudsc.data import calibration
    from parents_on_disk import save_bert

    from transformers import AutoTokenizer

    folder = save_bert(tmp_path / "bert", 0, ["a", "b"])
    tok = AutoTokenizer.from_pretrained(folder)
    data = Dataset.from_dict({"sentence1": ["one two", "three"], "sentence2": ["four", "five six"], "label": [0, 1]})
    calib = calibration(data, tok, "text", num_samples=2, batch_size=2)
    assert calib.column == ("sentence1", "sentence2")
    (batch,) = list(calib)
    assert batch["token_type_ids"].max() == 1  # the second sentence is segment B
    same = calibration(data.rename_columns({"sentence1": "x", "sentence2": "y"}), tok, "text", num_samples=2,
                       batch_size=2, column="x,y")
    assert torch.equal(next(iter(same))["input_ids"], batch["input_ids"])

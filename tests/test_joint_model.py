"""The joint multi-task model: exact per-task outputs, storage, Auto round trip, pipelines."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import tiny_inputs, tiny_model
from PIL import Image
from safetensors import safe_open
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput, TokenClassifierOutput

from hf_mudsc.joint_model import MuDSCJointConfig, MuDSCJointModel, register_auto_classes

KINDS = ["vit-cls", "bert-seq", "bert-token", "deit-teacher", "distilbert-seq", "electra-small"]


def is_shared(name: str, partial: bool) -> bool:
    """Full merge: the trunk is shared, heads are private; partial: only embeddings and layer 0 are shared."""
    if partial:
        return "embeddings" in name or re.search(r"\.layers?\.0\.", name) is not None
    return name.split(".")[0] in ("vit", "bert", "deit", "distilbert", "electra")


def task_pair(
    kind: str, partial: bool = False, labels: tuple[dict[int, str], dict[int, str]] | None = None, **overrides
) -> tuple[list[torch.nn.Module], set[str]]:
    """Two float32 task models (3 and 2 labels) whose shared parameters are equal, and the shared names."""
    kw = [dict(id2label=l) for l in labels] if labels else [{}, {}]
    a = tiny_model(kind, seed=0, num_labels=3, dtype=torch.float32, **overrides, **kw[0])
    b = tiny_model(kind, seed=1, num_labels=2, dtype=torch.float32, **overrides, **kw[1])
    shared = {n for n, _ in a.named_parameters() if is_shared(n, partial)}
    with torch.no_grad():
        for n in shared:
            b.get_parameter(n).copy_(a.get_parameter(n))
    return [a, b], shared


def joint_reference(models: list[torch.nn.Module], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([m(**inputs).logits.log_softmax(-1) for m in models], dim=-1)


@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@pytest.mark.parametrize("kind", KINDS)
def test_joint_logits_are_concatenated_task_log_softmax(kind: str, partial: bool) -> None:
    models, shared = task_pair(kind, partial)
    joint = MuDSCJointModel.from_task_models(models, shared, ["a", "b"]).eval()
    inputs = tiny_inputs(models[0])
    with torch.no_grad():
        out = joint(**inputs)
        raw = joint.task_logits(**inputs)
    torch.testing.assert_close(out.logits, joint_reference(models, inputs), atol=1e-6, rtol=0)
    for logits, m in zip(raw, models):
        with torch.no_grad():
            torch.testing.assert_close(logits, m(**inputs).logits, atol=1e-6, rtol=0)
    assert out.logits.shape[-1] == joint.config.num_labels == 5
    assert joint.config.label_offsets == [0, 3, 5]
    expected = (TokenClassifierOutput if kind.endswith("-token") else ImageClassifierOutput
                if kind.startswith(("vit", "deit")) else SequenceClassifierOutput)
    assert type(out) is expected


@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
def test_save_stores_each_tensor_once_and_round_trips(tmp_path, partial: bool) -> None:
    models, shared = task_pair("vit-cls", partial)
    joint = MuDSCJointModel.from_task_models(models, shared, ["a", "b"]).eval()
    joint.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        sizes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    private = [{n: p for n, p in m.named_parameters() if n not in shared} for m in models]
    assert len(sizes) == len(shared) + sum(len(p) for p in private)
    assert sum(int(np.prod(s)) for s in sizes.values()) == sum(
        models[0].get_parameter(n).numel() for n in shared
    ) + sum(p.numel() for task in private for p in task.values())
    models[0].save_pretrained(tmp_path / "task0")  # task 0's tensors are saved under its own checkpoint names
    with safe_open(tmp_path / "task0" / "model.safetensors", "pt") as f:
        task0_keys = {f"model.{k}" for k in f.keys()}
    assert set(sizes) == task0_keys | {f"private.1.{n.replace('.', '__')}" for n in private[1]}

    inputs = tiny_inputs(models[0])
    reference = joint_reference(models, inputs)
    for auto in (tf.AutoModel, tf.AutoModelForImageClassification):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is MuDSCJointModel and loaded.config.task_names == ["a", "b"]
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, reference, atol=1e-6, rtol=0)
        assert isinstance(tf.AutoConfig.from_pretrained(tmp_path), MuDSCJointConfig)


@pytest.mark.parametrize("kind", ["vit-cls", "bert-seq"])
def test_task_model_rebuilds_each_standalone_model(tmp_path, kind: str) -> None:
    models, shared = task_pair(kind, partial=True)
    MuDSCJointModel.from_task_models(models, shared, ["a", "b"]).save_pretrained(tmp_path)
    joint = tf.AutoModel.from_pretrained(tmp_path).eval()
    inputs = tiny_inputs(models[0])
    for i, m in enumerate(models):
        task = joint.task_model(i)
        assert type(task) is type(m) and task.config.id2label == m.config.id2label and not task.training
        with torch.no_grad():
            torch.testing.assert_close(task(**inputs).logits, m(**inputs).logits, atol=1e-6, rtol=0)
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(task.parameters(), joint.parameters()))


def test_colliding_labels_get_task_prefixes() -> None:
    labels = ({0: "cat", 1: "dog", 2: "bird"}, {0: "dog", 1: "frog"})
    models, shared = task_pair("vit-cls", labels=labels)
    joint = MuDSCJointModel.from_task_models(models, shared, ["pets", "pond"])
    assert joint.config.id2label == {0: "cat", 1: "pets/dog", 2: "bird", 3: "pond/dog", 4: "frog"}
    assert joint.config.label2id["pond/dog"] == 3


def test_the_outside_tag_keeps_its_name_in_every_task(tmp_path) -> None:
    """Token classification: "O" of either task stays "O" (a pipeline drops it by name; prefixed, it was
    taken for an entity), an entity that several tasks tag is prefixed after its IOB tag in all its tags
    (a pipeline groups entities by the tag in front: "people/B-PER" was read as a continuation, and
    "I-PER" as another entity); every "O" column scores "no task sees an entity", so one task's sure
    entity is not tied with the other's sure "O"."""
    labels = ({0: "O", 1: "B-PER", 2: "I-PER"}, {0: "O", 1: "B-PER"})
    models, shared = task_pair("bert-token", labels=labels)
    joint = MuDSCJointModel.from_task_models(models, shared, ["people", "more"])
    assert joint.config.id2label == {0: "O", 1: "B-people/PER", 2: "I-people/PER", 3: "O", 4: "B-more/PER"}
    assert joint.config.label2id["O"] == 0
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tf.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    for biases, entities in ((([50.0, 0, 0], [50.0, 0]), 0), (([0, 8.0, 0], [50.0, 0]), 3)):
        with torch.no_grad():  # both tasks sure of "O"; task 0 fairly sure of B-PER where task 1 is surer of "O"
            joint.model.classifier.bias.copy_(torch.tensor(biases[0]))
            joint.private["1"]["classifier__bias"].copy_(torch.tensor(biases[1]))
        joint.save_pretrained(tmp_path)
        tag = tf.pipeline("token-classification", model=str(tmp_path), tokenizer=str(tmp_path))
        found = tag("w1 w2 w3")
        assert len(found) == entities and all(e["entity"] == "B-people/PER" for e in found), found
        grouped = tf.pipeline("token-classification", model=str(tmp_path), tokenizer=str(tmp_path),
                              aggregation_strategy="simple")("w1 w2 w3")
        assert [g["entity_group"] for g in grouped] == ["people/PER"] * entities, grouped


def test_labels_give_union_cross_entropy_and_gradients() -> None:
    models, shared = task_pair("bert-seq")
    joint = MuDSCJointModel.from_task_models(models, shared, ["a", "b"])
    inputs = tiny_inputs(models[0])
    labels = torch.tensor([0, 2, 3, 4])
    out = joint(**inputs, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert all(p.grad is not None for p in joint.private["1"].values())
    loss, logits = joint(**inputs, labels=labels, return_dict=False)
    torch.testing.assert_close(logits, out.logits)


def tags(joint: MuDSCJointModel, inputs: dict[str, torch.Tensor]) -> list[str]:
    """The joint model's tag of every token, without task prefixes."""
    with torch.no_grad():
        found = joint(**inputs).logits.argmax(-1).reshape(-1)
    return [re.sub(r"^(\w-)?[^/]*/", r"\1", joint.config.id2label[int(j)]) for j in found]


def parent_tags(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    with torch.no_grad():
        return [model.config.id2label[int(j)] for j in model(**inputs).logits.argmax(-1).reshape(-1)]


def test_a_joint_token_tagger_tags_as_each_task_where_the_others_see_nothing() -> None:
    """A token gets a task's entity exactly where that task prefers it to "O": a self-merge tags as its
    parent (the "O" column summed over tasks, compared with one task's entity, tagged entities no
    parent saw), and a task with nothing to tag leaves the other's tags as they are."""
    labels = ({0: "O", 1: "B-PER", 2: "I-PER"}, {0: "O", 1: "B-LOC"})
    models, shared = task_pair("bert-token", labels=labels)
    inputs = tiny_inputs(models[0], batch=8)
    own = parent_tags(models[0], inputs)
    assert len(set(own)) == 3  # the parent tags entities and "O": the comparison means something
    twin = tiny_model("bert-token", seed=0, num_labels=3, dtype=torch.float32, id2label=labels[0])
    self_merge = MuDSCJointModel.from_task_models([models[0], twin], {n for n, _ in twin.named_parameters()},
                                                  ["a", "b"])
    assert tags(self_merge, inputs) == own
    with torch.no_grad():
        models[1].classifier.bias.copy_(torch.tensor([30.0, 0.0]))  # task 1 sees no location anywhere
    assert tags(MuDSCJointModel.from_task_models(models, shared, ["a", "b"]), inputs) == own


def test_a_joint_token_tagger_trains() -> None:
    """Its loss has gradients (the "O" columns were written into the log-softmax output in place)."""
    models, shared = task_pair("bert-token", labels=({0: "O", 1: "B-PER", 2: "I-PER"}, {0: "O", 1: "B-LOC"}))
    joint = MuDSCJointModel.from_task_models(models, shared, ["a", "b"]).train()
    inputs = tiny_inputs(models[0])
    labels = torch.randint(0, 5, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    joint(**inputs, labels=labels).loss.backward()
    grads = [p.grad for p in joint.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
def test_a_shared_trunk_runs_once_for_all_tasks(partial: bool) -> None:
    """A full merge shares the whole trunk: it runs once and every head reads it (the joint model cost
    as much as the two parents); a partial merge runs each task's own tail."""
    models, shared = task_pair("bert-seq", partial)
    joint = MuDSCJointModel.from_task_models(models, shared, ["a", "b"]).eval()
    calls = []
    joint.model.base_model.embeddings.register_forward_hook(lambda *_: calls.append(1))
    inputs = tiny_inputs(models[0])
    with torch.no_grad():
        torch.testing.assert_close(joint(**inputs).logits, joint_reference(models, inputs), atol=1e-6, rtol=0)
    assert len(calls) == (2 if partial else 1)
    assert "forward" not in vars(joint.model.base_model)  # the trunk runs as itself again


@pytest.mark.parametrize("kind", ["vit-cls", "bert-token"])
def test_parents_of_one_task_give_one_set_of_labels_and_their_mean_probability(kind: str, tmp_path) -> None:
    """Tasks with the same label names (in any order) are one task: the labels once, in task 0's order,
    scored by the mean of the tasks' probabilities (were listed once per task, each probability halved,
    answered by the more confident head); a self-merge gives its parent's probabilities."""
    names = {0: "cat", 1: "dog", 2: "bird"}
    models = [tiny_model(kind, seed=s, num_labels=3, dtype=torch.float32, id2label=labels)
              for s, labels in ((0, names), (1, {0: "dog", 1: "bird", 2: "cat"}))]
    shared = {n for n, _ in models[0].named_parameters() if is_shared(n, partial=False)}
    with torch.no_grad():
        for n in shared:
            models[1].get_parameter(n).copy_(models[0].get_parameter(n))
    joint = MuDSCJointModel.from_task_models(models, shared, ["a", "b"]).eval()
    assert joint.config.id2label == names and joint.config.label_columns == [[0, 1, 2], [1, 2, 0]]
    inputs = tiny_inputs(models[0])
    with torch.no_grad():
        probs = [m(**inputs).logits.softmax(-1) for m in models]
        expected = (probs[0] + probs[1][..., [2, 0, 1]]) / 2
        torch.testing.assert_close(joint(**inputs).logits.exp(), expected, atol=1e-6, rtol=0)
        twin = MuDSCJointModel.from_task_models([models[0], models[0]], shared | {
            n for n, _ in models[0].named_parameters()}, ["a", "b"]).eval()
        torch.testing.assert_close(twin(**inputs).logits, models[0](**inputs).logits.log_softmax(-1), atol=1e-6,
                                   rtol=0)


def test_default_label_names_say_nothing_of_the_task() -> None:
    """Tasks that kept transformers' LABEL_0, LABEL_1 may be any tasks: their labels stay apart (they
    were taken for one task and averaged)."""
    labels = ({0: "LABEL_0", 1: "LABEL_1"}, {0: "LABEL_0", 1: "LABEL_1"})
    models = [tiny_model("bert-seq", seed=s, num_labels=2, dtype=torch.float32, id2label=l)
              for s, l in zip((0, 1), labels)]
    joint = MuDSCJointModel.from_task_models(models, set(), ["a", "b"])
    assert joint.config.label_columns is None and len(joint.config.id2label) == 4


def test_refuses_incompatible_tasks() -> None:
    models, shared = task_pair("vit-cls")
    other = tiny_model("deit-cls", num_labels=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="one architecture class"):
        MuDSCJointModel.from_task_models([models[0], other], shared, ["a", "b"])
    name = "vit.layers.0.attention.q_proj.weight"
    with torch.no_grad():
        models[1].get_parameter(name).add_(1e-3)
    with pytest.raises(ValueError, match=name):
        MuDSCJointModel.from_task_models(models, shared, ["a", "b"])
    models, shared = task_pair("vit-cls")
    with pytest.raises(ValueError, match="one distinct name"):
        MuDSCJointModel.from_task_models(models, shared, ["a", "a"])
    bases = [tiny_model("vit-base", dtype=torch.float32)] * 2
    with pytest.raises(ValueError, match="task heads"):
        MuDSCJointModel.from_task_models(bases, {n for n, _ in bases[0].named_parameters()}, ["a", "b"])
    with pytest.raises(ValueError, match="float64"):
        MuDSCJointModel.from_task_models([models[0], models[1].double()], set(), ["a", "b"])
    wider = tiny_model("vit-cls", num_labels=2, dtype=torch.float32, layer_norm_eps=1e-5)
    with pytest.raises(ValueError, match="layer_norm_eps"):
        MuDSCJointModel.from_task_models([models[0], wider], set(), ["a", "b"])


def test_registration_is_idempotent() -> None:
    register_auto_classes()
    register_auto_classes()
    assert isinstance(tf.AutoConfig.for_model("mudsc-joint"), MuDSCJointConfig)


def test_image_classification_pipeline_returns_union_labels(tmp_path) -> None:
    # The pipeline converts every image to RGB, so this pair has 3 channels.
    models, shared = task_pair("vit-cls", num_channels=3)
    joint = MuDSCJointModel.from_task_models(models, shared, ["a", "b"])
    joint.save_pretrained(tmp_path)
    processor = tf.ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(tmp_path)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 20)).astype("uint8"), mode="L")
    predictions = tf.pipeline("image-classification", model=str(tmp_path))(image, top_k=5)
    assert {p["label"] for p in predictions} == set(joint.config.id2label.values())
    with torch.no_grad():
        probs = joint.eval()(**processor(image.convert("RGB"), return_tensors="pt")).logits.softmax(-1)[0]
    assert predictions[0]["label"] == joint.config.id2label[int(probs.argmax())]
    assert predictions[0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_text_classification_pipeline_returns_union_labels(tmp_path) -> None:
    labels = ({0: "sport", 1: "news", 2: "art"}, {0: "pos", 1: "neg"})
    models, shared = task_pair("bert-seq", labels=labels)
    MuDSCJointModel.from_task_models(models, shared, ["topic", "sentiment"]).save_pretrained(tmp_path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tf.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    classify = tf.pipeline("text-classification", model=str(tmp_path), tokenizer=str(tmp_path))
    predictions = classify("w1 w2 w3", top_k=None)
    assert {p["label"] for p in predictions} == {"sport", "news", "art", "pos", "neg"}
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0)
    assert classify(["w5 w7", "w9"])[0]["label"] in {"sport", "news", "art", "pos", "neg"}

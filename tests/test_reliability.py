"""Reliability and safety: a long merge never ends in a hang, a silent wrong answer or a
half-written folder.

- pickle checkpoints and custom code are refused unless asked for, with a message naming the option;
- Ctrl-C while collecting statistics or writing gives exit 130, one line, and no (partial) folder;
- degenerate numerics (dead units, zeroed layers, constant features, huge means, one example)
  give finite weights that load, and a ``MergeQualityWarning`` where the result may be poor;
- mismatched image processors and non-finite activations are refused with one line.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model
from hf_mudsc import MergeQualityWarning, MuDSCMerger
from hf_mudsc.cli import main
from hf_mudsc.loading import ParentError, load_parent
from hf_mudsc.similarity import weight_similarity
from hf_mudsc.transforms import identity_transforms
from hf_mudsc.unitmaps import unit_map_of
from parents_on_disk import all_weight_bytes, image_processor, save_bert, save_vit, tree, vit_parents

IMAGE_ARGS = ["--num-samples", "8", "--batch-size", "4", "--method", "zipit"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Parents and data on disk; no test may change anything here."""
    from parents_on_disk import save_image_data

    root = tmp_path_factory.mktemp("reliability")
    p: dict[str, Path] = {"root": root}
    p["vit0"], p["vit1"] = vit_parents(root)
    p["image_disk"] = save_image_data(root / "data", n=8)
    # the second parent as a pickle checkpoint only
    p["pickle"] = root / "pickle"
    shutil.copytree(p["vit1"], p["pickle"])
    from safetensors.torch import load_file

    torch.save(load_file(str(p["pickle"] / "model.safetensors")), p["pickle"] / "pytorch_model.bin")
    (p["pickle"] / "model.safetensors").unlink()
    # the second parent with another normalisation
    p["other_mean"] = root / "other_mean"
    shutil.copytree(p["vit1"], p["other_mean"])
    proc = image_processor()
    proc.image_mean = [0.4] * 3
    proc.save_pretrained(p["other_mean"])
    # a parent with finite weights whose LayerNorm overflows float32 (inf activations)
    p["inf"] = save_vit(root / "inf", 1, ["apple", "pear"])
    model = tiny_model("vit-cls", seed=1, num_labels=2, dtype=torch.float32, num_channels=3)
    with torch.no_grad():
        model.get_parameter("vit.layers.1.layernorm_before.weight").fill_(3e38)
    model.save_pretrained(p["inf"])
    return p


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # only what the command prints
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-mudsc: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------- pickle and custom code
def test_pickle_parent_is_refused_by_default(inputs, tmp_path, capsys):
    refused = r"pickle checkpoint \(pytorch_model.bin\).*allow_pickle=True.*--allow-pickle"
    with pytest.raises(ParentError, match=refused):
        load_parent(str(inputs["pickle"]))
    before = tree(inputs["root"])
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["pickle"], "--method", "weight-matching",
                          "--out", tmp_path / "merged")
    one_line_error(code, stderr, "pickle", "--allow-pickle")
    assert list(tmp_path.iterdir()) == [] and tree(inputs["root"]) == before


def test_pickle_parent_merges_when_allowed(inputs, tmp_path, capsys):
    options = ["--method", "weight-matching", "--out"]
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["pickle"], "--allow-pickle", *options,
                          tmp_path / "from_pickle")
    assert (code, stderr) == (0, "")
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], *options, tmp_path / "from_safetensors")
    assert (code, stderr) == (0, "")
    # the same weights, and the output holds no pickle file (safetensors only)
    assert all_weight_bytes(tmp_path / "from_pickle") == all_weight_bytes(tmp_path / "from_safetensors")
    assert not any(p.suffix == ".bin" for p in (tmp_path / "from_pickle").rglob("*"))


def record_calls(monkeypatch, owner, name: str, calls: list) -> None:
    """Wrap the classmethod ``owner.name`` to record its keyword arguments."""
    original = getattr(owner, name).__func__

    def wrapper(cls, *args, **kwargs):
        calls.append((f"{cls.__name__}.{name}", kwargs.get("trust_remote_code")))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(owner, name, classmethod(wrapper))


def test_trust_remote_code_is_false_unless_asked(inputs, tmp_path, capsys, monkeypatch):
    import transformers

    calls: list = []
    for owner in (transformers.AutoConfig, transformers.ViTForImageClassification, transformers.AutoImageProcessor):
        record_calls(monkeypatch, owner, "from_pretrained", calls)
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--method", "weight-matching",
                          "--out", tmp_path / "merged")
    assert (code, stderr) == (0, "")
    names = {c[0] for c in calls}
    assert {"AutoConfig.from_pretrained", "ViTForImageClassification.from_pretrained",
            "AutoImageProcessor.from_pretrained"} <= names
    assert all(trust is False for _, trust in calls), calls
    calls.clear()
    load_parent(str(inputs["vit0"]), trust_remote_code=True)
    assert calls and all(trust is True for _, trust in calls), calls


@pytest.mark.parametrize("model_type", ["custom-vit", "vit"])
def test_custom_code_is_refused_unless_trusted(inputs, tmp_path, capsys, model_type):
    """``auto_map`` names custom code. An unknown model type cannot load without it; a known one
    would silently load the built-in class in place of the model's own code: both are refused."""
    folder = tmp_path / "inputs" / "custom"
    shutil.copytree(inputs["vit1"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, architectures=["CustomModel"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForImageClassification": "modeling_custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "inputs" / "code-ran"
    code_text = f"open({str(marker)!r}, 'w').close()\n"
    (folder / "configuration_custom.py").write_text(code_text)
    (folder / "modeling_custom.py").write_text(code_text)
    refused = (r"needs custom code \(configuration_custom.CustomConfig, modeling_custom.CustomModel\)"
               r".*trust_remote_code=True.*--trust-remote-code")
    with pytest.raises(ParentError, match=refused):
        load_parent(str(folder))
    code, _, stderr = run(capsys, "merge", inputs["vit0"], folder, "--method", "weight-matching",
                          "--out", tmp_path / "merged")
    one_line_error(code, stderr, "custom code", "--trust-remote-code")
    assert not marker.exists() and not (tmp_path / "merged").exists()


# --------------------------------------------------------------------------- parents that differ
def _bert_variant(root: Path, name: str, **overrides) -> Path:
    if name == "multiple-choice":
        from transformers import AutoTokenizer, BertConfig, BertForMultipleChoice

        from conftest import KW

        torch.manual_seed(1)
        folder = root / name
        BertForMultipleChoice(BertConfig(**KW, vocab_size=99)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(root / "bert").save_pretrained(folder)
        return folder
    return save_bert(root / name, 1, ["c", "d"], **overrides)


@pytest.mark.parametrize("name, overrides, fragments", [
    ("relu", dict(hidden_act="relu"), ["config field 'hidden_act'", "'gelu'", "'relu'"]),
    ("eps", dict(layer_norm_eps=1e-5), ["config field 'layer_norm_eps'"]),
    ("positions", dict(max_position_embeddings=32), ["config field 'max_position_embeddings'"]),
    ("bfloat16", dict(dtype=torch.bfloat16), ["different dtypes", "--torch-dtype float32"]),
    ("multiple-choice", {}, ["multiple-choice head"]),
])
def test_parents_that_cannot_merge_are_refused_before_any_pass(tmp_path, capsys, name, overrides, fragments):
    """Refused at load time, in one line, nothing written (were: a crash in the statistics pass, in
    the apply or the repairs, or a refusal to save after the whole merge)."""
    from parents_on_disk import save_text_data

    first = save_bert(tmp_path / "bert", 0, ["a", "b"])
    other = _bert_variant(tmp_path, name, **overrides)
    data = save_text_data(tmp_path / "data", n=8)["disk"]
    for pair in ((first, other), (other, first)) if name != "multiple-choice" else ((other, first),):
        code, _, stderr = run(capsys, "merge", *pair, "--dataset", data, "--num-samples", "8",
                              "--out", tmp_path / "merged")
        one_line_error(code, stderr, *fragments)
        assert not (tmp_path / "merged").exists()


def test_parents_that_differ_in_dropout_only_merge_into_one_joint_model(tmp_path, capsys):
    """Dropout does not change what a model computes at inference: the joint model is written (the
    task models keep their own rates)."""
    first = save_bert(tmp_path / "a", 0, ["a", "b"])
    other = save_bert(tmp_path / "b", 1, ["c", "d"], hidden_dropout_prob=0.3, initializer_range=0.02)
    code, _, stderr = run(capsys, "merge", first, other, "--method", "weight-matching", "--out", tmp_path / "m")
    assert (code, stderr) == (0, "")
    joint = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [c["hidden_dropout_prob"] for c in joint["task_configs"]] == [0.1, 0.3]


def test_question_answering_parents_give_task_models_and_no_joint_model(tmp_path, capsys):
    """Extractive QA heads (a start and an end logit per token) form no joint model: the folder holds
    the task models, and its card loads them with their Auto class (transformers 5 has no QA pipeline)."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertConfig, BertForQuestionAnswering

    from conftest import KW
    from parents_on_disk import save_text_data, tokenizer

    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folders.append(tmp_path / f"qa{seed}")
        BertForQuestionAnswering(BertConfig(**KW, vocab_size=99)).save_pretrained(folders[-1])
        tokenizer().save_pretrained(folders[-1])
    data = save_text_data(tmp_path / "data", n=8)["disk"]
    out = tmp_path / "merged"
    code, _, stderr = run(capsys, "merge", *folders, "--dataset", data, "--num-samples", "8", "--out", out)
    assert (code, stderr) == (0, "")
    assert not (out / "config.json").exists()
    card = (out / "README.md").read_text()
    assert "AutoModelForQuestionAnswering.from_pretrained" in card and "pipeline(" not in card
    model = AutoModelForQuestionAnswering.from_pretrained(out / "tasks" / "1")
    answer = model(**AutoTokenizer.from_pretrained(out / "tasks" / "1")(["good game"], return_tensors="pt"))
    assert answer.start_logits.shape == (1, 4) and torch.isfinite(answer.end_logits).all()
    merger = MuDSCMerger.from_pretrained([str(f) for f in folders], "weight-matching")
    with pytest.raises(ValueError, match="form no joint model: use result.task_models"):
        merger.merge().model


# --------------------------------------------------------------------------- interrupts
def no_output_left(tmp_path: Path) -> None:
    """Neither the output, nor its parent folder, nor a temporary or moved-aside folder."""
    assert not (tmp_path / "outputs").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*")), list(tmp_path.rglob("*"))


def interrupt_on_call(monkeypatch, owner, name: str, call: int = 1) -> list:
    """Make ``owner.name`` raise KeyboardInterrupt on its ``call``-th call (1-based)."""
    original = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def interrupted(capsys, inputs, out: Path, *extra) -> None:
    code, stdout, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--dataset", inputs["image_disk"],
                               *IMAGE_ARGS, "--out", out, *extra)
    assert code == 130
    assert stderr == "hf-mudsc: interrupted; nothing was written\n" and stdout == ""


def test_interrupt_during_statistics_writes_nothing(inputs, tmp_path, capsys, monkeypatch):
    from hf_mudsc.statistics import _Collector

    calls = interrupt_on_call(monkeypatch, _Collector, "run", call=2)  # in the second batch
    interrupted(capsys, inputs, tmp_path / "outputs" / "merged")
    assert len(calls) == 2
    no_output_left(tmp_path)


WRITE_STEPS = {
    "joint model": ("hf_mudsc.joint_model", "MuDSCJointModel", "save_pretrained"),  # the first file written
    "transforms": ("hf_mudsc.output", None, "save_transforms"),  # after every model file
}


@pytest.mark.parametrize("step", list(WRITE_STEPS))
def test_interrupt_during_writing_writes_nothing(inputs, tmp_path, capsys, monkeypatch, step):
    import importlib

    module, cls, name = WRITE_STEPS[step]
    owner = importlib.import_module(module)
    owner = getattr(owner, cls) if cls else owner
    calls = interrupt_on_call(monkeypatch, owner, name)
    interrupted(capsys, inputs, tmp_path / "outputs" / "merged")
    assert calls
    no_output_left(tmp_path)


def test_interrupted_overwrite_leaves_the_previous_folder(inputs, tmp_path, capsys, monkeypatch):
    from hf_mudsc import output

    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("old")
    interrupt_on_call(monkeypatch, output, "save_transforms")
    interrupted(capsys, inputs, out, "--overwrite")
    assert tree(out) == {"old.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_interrupted_upload_says_the_folder_was_written(inputs, tmp_path, capsys, monkeypatch):
    from hf_mudsc.io import hub

    interrupt_on_call(monkeypatch, hub, "push_folder")
    out = tmp_path / "merged"
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--method", "weight-matching",
                          "--out", out, "--push-to-hub", "me/merged")
    assert code == 130 and stderr.count("\n") == 1
    assert stderr.startswith(f"hf-mudsc: interrupted; the merge was written to {out}, the upload to me/merged")
    assert (out / "merge_recipe.json").is_file()


# --------------------------------------------------------------------------- numerics
def image_batches(n: int = 3, batch: int = 4, seed: int = 0, dtype=torch.float64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(batch, 1, 16, 16, generator=g, dtype=dtype)} for _ in range(n)]


def text_batches(model, n: int = 3, batch: int = 4) -> list[dict[str, torch.Tensor]]:
    from conftest import tiny_inputs

    return [tiny_inputs(model, batch=batch, seed=300 + i) for i in range(n)]


def merge_with_warnings(parents, data, num_samples: int, **config) -> tuple[object, list[str]]:
    """Merge in memory; return the result and the messages of the MergeQualityWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = MuDSCMerger.from_pretrained(parents, **config).merge(data, num_samples=num_samples, progress=False)
    return result, [str(w.message) for w in caught if issubclass(w.category, MergeQualityWarning)]


def assert_sound(result, data) -> None:
    """Every merged weight finite; every task model runs to finite outputs."""
    for i in range(len(result.parents)):
        for name, tensor in result.weights.task_state_dict(i).items():
            assert torch.isfinite(tensor).all(), (i, name)
    with torch.no_grad():
        for task in result.task_models:
            inputs = {k: v.to(task.dtype) if v.is_floating_point() else v for k, v in data[0].items()}
            assert torch.isfinite(task(**inputs).logits).all()


def assert_loads(result, tmp_path: Path) -> None:
    """The folder is written, and its task models and joint model load and predict finite values."""
    from transformers import AutoModel, AutoModelForImageClassification

    import hf_mudsc  # noqa: F401  (registers the joint model)

    out = result.save_pretrained(tmp_path / "merged")
    model = AutoModelForImageClassification.from_pretrained(out / "tasks" / "1")
    joint = AutoModel.from_pretrained(out)
    x = torch.randn(2, model.config.num_channels, 16, 16)
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=x).logits).all()
        assert all(torch.isfinite(v).all() for v in joint(pixel_values=x).values() if isinstance(v, torch.Tensor))


def kill_ffn_unit(model, layer: int, unit: int, prefix: str = "vit.layers.{}.mlp") -> None:
    """Zero one FFN unit's input weights and bias (a constant activation) and its output column."""
    mlp = prefix.format(layer)
    with torch.no_grad():
        model.get_parameter(f"{mlp}.fc1.weight")[unit] = 0
        model.get_parameter(f"{mlp}.fc1.bias")[unit] = 0
        model.get_parameter(f"{mlp}.fc2.weight")[:, unit] = 0


def zero_layer(model, layer: int, prefix: str) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(f"{prefix}.{layer}."):
                p.zero_()


@pytest.mark.parametrize("method,config", [("zipit", {}), ("mudsc", {"alpha": 0.5, "max_sweeps": 2}),
                                           ("activation-matching", {})])
def test_dead_ffn_unit(method, config):
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    kill_ffn_unit(b, layer=0, unit=5)
    data = image_batches()
    result, messages = merge_with_warnings([a, b], data, 12, method=method, **config)
    assert_sound(result, data)
    assert len(messages) == 1 and "units with constant activations" in messages[0]
    assert "'layer.0.ffn' 1 of 64 units of 'in-memory ViTForImageClassification'" in messages[0]


def test_zero_variance_weight_rows_give_zero_similarity_not_nan():
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    kill_ffn_unit(b, layer=0, unit=5)
    zero_layer(b, 1, "vit.layers")  # every weight row of layer 1 is zero
    maps = [unit_map_of(a), unit_map_of(b)]
    states = [{n: p.detach() for n, p in m.named_parameters()} for m in (a, b)]
    for space in ("layer.0.ffn", "layer.1.ffn", "layer.1.qk", "layer.1.vo", "residual"):
        sim = weight_similarity(space, maps, states, identity_transforms(maps))
        assert np.isfinite(sim).all() and np.abs(sim).max() <= 1.0, space
    result = MuDSCMerger.from_pretrained([a, b], "weight-matching").merge(progress=False)  # data-free
    assert_sound(result, image_batches(1))


@pytest.mark.parametrize("kind,prefix", [("vit-cls", "vit.layers"), ("bert-seq", "bert.encoder.layer")])
def test_model_with_a_zeroed_layer(kind, prefix, tmp_path):
    a, b = tiny_model(kind, seed=0, dtype=torch.float32), tiny_model(kind, seed=1, dtype=torch.float32)
    zero_layer(b, 0, prefix)
    data = image_batches(dtype=torch.float32) if kind == "vit-cls" else text_batches(a)
    result, messages = merge_with_warnings([a, b], data, 12, method="mudsc", max_sweeps=2)
    assert_sound(result, data)
    name = f"in-memory {type(b).__name__}"
    constant = [m for m in messages if "units with constant activations" in m]
    assert len(constant) == 1
    for space, units in (("layer.0.qk", 32), ("layer.0.vo", 32), ("layer.0.ffn", 64)):
        assert f"'{space}' {units} of {units} units of '{name}'" in constant[0]
    if kind == "vit-cls":
        assert_loads(result, tmp_path)


def test_constant_residual_feature():
    """A BERT whose every LayerNorm writes 0 to one unit (post-LN: the whole residual stream)."""
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    with torch.no_grad():
        for name, p in a.named_parameters():
            if ".LayerNorm." in name:
                p[7] = 0
    data = text_batches(a)
    result, messages = merge_with_warnings([a, b], data, 12, method="zipit")
    assert_sound(result, data)
    assert any("'residual' 1 of 32 units of 'in-memory BertForSequenceClassification'" in m for m in messages), messages


def test_huge_activation_means_are_exact():
    """An FFN unit with a mean of 1e4 (float32 parents): its correlations equal a direct float64
    computation; nothing is taken for constant, nothing cancels."""
    a, b = (tiny_model("vit-cls", seed=s, dtype=torch.float32) for s in (0, 1))
    unit, shift = 3, 1e4
    with torch.no_grad():  # GELU(z + 1e4) = z + 1e4: a unit with mean 1e4, the output compensated
        b.vit.layers[0].mlp.fc1.bias[unit] += shift
        b.vit.layers[0].mlp.fc2.bias -= shift * b.vit.layers[0].mlp.fc2.weight[:, unit]
    data = image_batches(n=4, batch=8, dtype=torch.float32)
    feats: list[list[torch.Tensor]] = [[], []]
    hooks = [m.vit.layers[0].mlp.fc2.register_forward_hook(lambda _m, args, _o, i=i: feats[i].append(args[0]))
             for i, m in enumerate((a, b))]
    merger = MuDSCMerger.from_pretrained([a, b], "zipit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MergeQualityWarning)  # nothing to warn about
        merger.collect(data, num_samples=32, progress=False)
    for h in hooks:
        h.remove()
    x = torch.cat([torch.cat(f).reshape(-1, 64) for f in feats], dim=1).double().numpy()
    assert x[:, 64 + unit].mean() > 0.99 * shift
    direct = np.corrcoef(x, rowvar=False)
    # the merger keeps float32 correlations (float32 rounding is 6e-8; a cancelling mean of 1e4 would be 1e-4)
    np.testing.assert_allclose(merger._activation["layer.0.ffn"], direct, atol=1e-6, rtol=0)
    result = merger.merge(progress=False)
    assert_sound(result, data)


def test_tiny_calibration_set_warns_with_the_counts():
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    data = image_batches(n=1, batch=1)  # one image: 17 tokens
    result, messages = merge_with_warnings([a, b], data, 1, method="zipit")
    assert_sound(result, data)
    (few,) = [m for m in messages if m.startswith("too little calibration data")]
    # the FFN (64 units) and VO (32) spaces see 17 samples; QK (q and k: 34) and the residual stream
    # (3 sites: 51) see enough
    for space, units in (("layer.0.vo", 32), ("layer.0.ffn", 64), ("layer.1.vo", 32), ("layer.1.ffn", 64)):
        assert f"'{space}' has 17 samples for {units} units" in few
    assert "qk" not in few and "residual" not in few and "num_samples" in few and "statistics_samples" not in few
    _, messages = merge_with_warnings([a, b], image_batches(n=2, batch=1), 2, method="zipit", statistics_samples=1)
    (few,) = [m for m in messages if m.startswith("too little calibration data")]
    assert "'layer.0.ffn' has 17 samples" in few and "statistics_samples" in few  # the cap left one image out


def test_enough_calibration_data_gives_no_warning():
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    _, messages = merge_with_warnings([a, b], image_batches(), 12, method="zipit")
    assert messages == []


def test_repeated_calibration_inputs_warn_with_the_counts():
    """One text 40 times merged exactly as that text once with only a 'constant units' warning (empty
    texts, saturated images alike): the repeats are counted and said."""
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    (batch,) = text_batches(a, n=1, batch=1)
    data = [{k: v.repeat(8, *[1] * (v.dim() - 1)) for k, v in batch.items()} for _ in range(5)]
    _, messages = merge_with_warnings([a, b], data, 40, method="zipit")
    assert any(m.startswith("the calibration data holds 1 distinct input among its 40 samples") for m in messages)
    _, messages = merge_with_warnings([a, b], text_batches(a, n=5, batch=8), 40, method="zipit")
    assert not any("distinct" in m for m in messages)


def test_one_example_through_the_command_line(tmp_path, capsys):
    """One sentence: the pooler sees one sample (every unit constant), the other spaces a handful
    of tokens. The merge completes, says why it may be poor, and the result loads."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    parents = [save_bert(tmp_path / f"bert{i}", i, ["no", "yes"]) for i in range(2)]
    Dataset.from_dict({"text": ["the good game was a great win"]}).save_to_disk(str(tmp_path / "one"))
    out = tmp_path / "merged"
    code, stdout, stderr = run(capsys, "merge", *parents, "--dataset", tmp_path / "one", "--num-samples", 1,
                               "--method", "mudsc", "--max-sweeps", 2, "--out", out)
    assert code == 0 and stdout.startswith("merged 2 models"), stderr
    lines = stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("hf-mudsc: warning: ") for line in lines), stderr
    assert "'pooler' has 1 sample for 32 units" in lines[0]
    assert "'pooler' 32 of 32 units of" in lines[1]
    assert "Traceback" not in stderr
    model = AutoModelForSequenceClassification.from_pretrained(out / "tasks" / "0")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert recipe["calibration"]["samples_per_space"]["pooler"] == 1
    # the warnings stay with the result: in the recipe and in the model card
    assert [f"hf-mudsc: warning: {w}" for w in recipe["calibration"]["warnings"]] == lines
    card = (out / "README.md").read_text()
    assert "- **warnings**:\n  - too little calibration data: 'pooler' has 1 sample" in card


def test_one_example_in_memory_for_every_method():
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    data = text_batches(a, n=1, batch=1)
    for config in ({"method": "zipit"}, {"method": "activation-matching"}, {"method": "mudsc", "max_sweeps": 2},
                   {"method": "mudsc", "mode": "permute", "max_sweeps": 2}):
        result, messages = merge_with_warnings([a, b], data, 1, **config)
        assert_sound(result, data)
        assert len(messages) == 2


# --------------------------------------------------------------------------- refused up front
def test_parents_with_different_image_processors_are_refused(inputs, tmp_path, capsys):
    with pytest.raises(ParentError, match=r"different image processors.*differ in image_mean"):
        MuDSCMerger.from_pretrained([str(inputs["vit0"]), str(inputs["other_mean"])])
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["other_mean"], "--dataset", inputs["image_disk"],
                          "--out", tmp_path / "merged")
    one_line_error(code, stderr, "different image processors", "other_mean", "image_mean", "0.4")
    assert list(tmp_path.iterdir()) == []


def test_infinite_activations_are_named_through_the_command_line(inputs, tmp_path, capsys):
    """Weights are finite (3e38 < float32 max), the LayerNorm's output is not: the error names the space."""
    before = tree(inputs["root"])
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["inf"], "--dataset", inputs["image_disk"],
                          *IMAGE_ARGS, "--out", tmp_path / "outputs" / "merged")
    one_line_error(code, stderr, "non-finite activation (NaN/inf)", "space 'layer.1.qk'", "model 1")
    assert list(tmp_path.iterdir()) == [] and tree(inputs["root"]) == before


def test_a_seed_that_torch_cannot_take_is_refused_before_loading(inputs, tmp_path, capsys):
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--dataset", inputs["image_disk"],
                          "--seed", 2**64, "--out", tmp_path / "merged")
    one_line_error(code, stderr, "seed must be an integer in [0, 2**64)")
    from hf_mudsc import MergeConfig

    assert MergeConfig(seed=np.int64(3)).seed == 3 and type(MergeConfig(seed=np.int64(3)).seed) is int


def test_a_split_of_a_single_table_is_refused_not_ignored(inputs, tmp_path, capsys):
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--dataset", inputs["image_disk"],
                          "--split", "test", "--out", tmp_path / "merged")
    one_line_error(code, stderr, "is a single table (split 'train'), it has no split 'test'; drop --split")
    assert list(tmp_path.iterdir()) == []


def test_one_folder_merged_with_itself_is_the_folder(inputs, tmp_path, capsys):
    """Parents of one name (a folder twice, a Hub id at two revisions, loaded models without a
    name) still give distinct task names, the folder's own name and never its path; an identity
    merge returns the parent's weights."""
    from parents_on_disk import weight_bytes

    out = tmp_path / "merged"
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit0"], "--method", "weight-matching", "--out", out)
    assert (code, stderr) == (0, "")
    assert weight_bytes(out / "tasks" / "0") == weight_bytes(out / "tasks" / "1") == weight_bytes(inputs["vit0"])
    names = json.loads((out / "config.json").read_text())["task_names"]
    assert names == [f"{inputs['vit0'].name}#0", f"{inputs['vit0'].name}#1"]


def test_folders_of_one_name_are_named_by_their_last_two_folders(inputs, tmp_path, capsys):
    """Checkpoints of two runs (seed0/checkpoint-500, seed1/checkpoint-500) were both named
    checkpoint-500 in the cards and the joint model (checkpoint-500#0, #1)."""
    import shutil

    folders = [tmp_path / run / "checkpoint-500" for run in ("seed0", "seed1")]
    for folder, parent in zip(folders, (inputs["vit0"], inputs["vit1"])):
        shutil.copytree(parent, folder)
    out = tmp_path / "merged"
    code, _, _ = run(capsys, "merge", *folders, "--method", "weight-matching", "--out", out)
    assert code == 0
    assert json.loads((out / "config.json").read_text())["task_names"] == ["seed0/checkpoint-500",
                                                                          "seed1/checkpoint-500"]
    assert "`seed1/checkpoint-500` -> `tasks/1/`" in (out / "README.md").read_text()


def test_the_command_line_says_what_auto_chose(inputs, tmp_path, capsys):
    """It printed 'merged 2 models with auto' (the recipe then names the chosen method)."""
    out = tmp_path / "merged"
    code, stdout, _ = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--method", "auto", "--dataset",
                          inputs["image_disk"], "--max-sweeps", "1", "--repair", "none", "--out", out)
    chosen = next(r["candidate"] for r in json.loads((out / "merge_recipe.json").read_text())["selection"]
                  if r.get("chosen"))
    assert code == 0 and f"with auto (chose {chosen} of " in stdout


def test_an_interrupted_statistics_pass_leaves_the_parents_as_they_were(monkeypatch):
    """No hook stays behind and the training flags come back, so the same merger can collect again."""
    from hf_mudsc.statistics import _Collector

    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    a.train()
    merger = MuDSCMerger.from_pretrained([a, b], "zipit")
    a.train()  # loading puts parents in eval mode; a user may switch one back
    data = image_batches()
    interrupt_on_call(monkeypatch, _Collector, "run", call=2)
    with pytest.raises(KeyboardInterrupt):
        merger.collect(data, num_samples=12, progress=False)
    assert merger.calibration is None
    for model in (a, b):
        assert not any(m._forward_hooks for m in model.modules())
    assert a.training and all(m.training for m in a.modules()) and not b.training
    monkeypatch.undo()
    merger.collect(data, num_samples=12, progress=False)
    assert_sound(merger.merge(progress=False), data)

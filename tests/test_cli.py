"""The ``hf-mudsc`` command: ``merge`` (data from a save_to_disk folder, .csv, .jsonl; a YAML recipe),
``apply``, ``push`` and ``merge --push-to-hub`` against a fake Hub, and its errors: one line on
stderr, a non-zero exit, and nothing written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
from huggingface_hub import ModelCard, constants

from conftest import tiny_model
from hf_mudsc import MuDSCMerger
from hf_mudsc.cli import load_calibration_dataset, main
from hub_server import FakeHub
from parents_on_disk import (
    BERT_LABELS,
    VOCAB,
    all_weight_bytes,
    bert_parents,
    image_processor,
    save_bert,
    save_gpt2,
    save_image_data,
    save_text_data,
    save_vit,
    tree,
    vit_parents,
)

TOKEN = "hf_" + "CliToken0123456789" * 2
N = 12
TEXT_ARGS = ["--num-samples", str(N), "--batch-size", "4", "--method", "zipit", "--zip-budget", "0.2"]
IMAGE_ARGS = ["--num-samples", str(N), "--batch-size", "4", "--method", "mudsc", "--alpha", "0.5", "--max-sweeps", "2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Parents, broken parents, data sets and recipes; no command may change anything here."""
    root = tmp_path_factory.mktemp("inputs")
    p: dict[str, Path] = {"root": root}
    p["vit0"], p["vit1"] = vit_parents(root)
    p["bert0"], p["bert1"] = bert_parents(root)
    text = save_text_data(root / "data")
    p.update(text_disk=text["disk"], csv=text["csv"], jsonl=text["jsonl"], image_disk=save_image_data(root / "data"))
    # a text column that is not found by name: --column is needed
    p["body_csv"] = root / "data" / "body.csv"
    p["body_csv"].write_text(text["csv"].read_text().replace("text,label", "body,label", 1))
    from datasets import Dataset, Features, Image

    Dataset.from_dict({"image": []}, features=Features({"image": Image()})).save_to_disk(str(root / "data" / "empty"))
    p["empty_disk"] = root / "data" / "empty"
    p["empty_csv"] = root / "data" / "empty.csv"
    p["empty_csv"].write_text("text,label\n")
    # broken or unsuitable parents
    p["corrupt"] = root / "corrupt"
    shutil.copytree(p["vit1"], p["corrupt"])
    weights = p["corrupt"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    p["incomplete"] = root / "incomplete"  # one tensor left out of the checkpoint
    shutil.copytree(p["vit1"], p["incomplete"])
    from safetensors.torch import load_file, save_file

    tensors = load_file(p["incomplete"] / "model.safetensors")
    tensors.pop("vit.encoder.layer.1.intermediate.dense.weight")
    save_file(tensors, p["incomplete"] / "model.safetensors", metadata={"format": "pt"})
    other_vocab = VOCAB[:5] + [w + "x" for w in VOCAB[5:]]
    p["bert_vocab"] = save_bert(root / "bert_vocab", 1, list(BERT_LABELS[1]), words=other_vocab)
    p["gpt2"] = save_gpt2(root / "gpt2")
    nan = tiny_model("vit-cls", seed=1, num_labels=2, dtype=torch.float32, num_channels=3)
    with torch.no_grad():
        nan.get_parameter("vit.layers.1.mlp.fc1.weight")[3, 2] = float("nan")
    nan.save_pretrained(root / "nan")
    image_processor().save_pretrained(root / "nan")
    p["nan"] = root / "nan"
    p["no_config"] = root / "no_config"
    p["no_config"].mkdir()
    (p["no_config"] / "model.safetensors").write_bytes(b"x")
    # recipes
    p["unknown_yaml"] = root / "unknown.yaml"
    p["unknown_yaml"].write_text(f"models: [{p['vit0']}, {p['vit1']}]\ndataset: {p['image_disk']}\nbogus: 1\n")
    p["token_yaml"] = root / "token.yaml"
    p["token_yaml"].write_text(f"models: [{p['vit0']}, {p['vit1']}]\ndataset: {p['image_disk']}\ntoken: {TOKEN}\n")
    p["typed_yaml"] = root / "typed.yaml"
    p["typed_yaml"].write_text(f"models: {p['vit0']}\ndataset: {p['image_disk']}\n")
    return p


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def not_warnings(stderr: str) -> str:
    """``stderr`` without its one-line warnings (the tiny text merges use 12 examples for a pooler of
    32 units: too little calibration data, and the command says so)."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("hf-mudsc: warning: "))


def python_merge(parents, data, **settings):
    return MuDSCMerger.from_pretrained([str(p) for p in parents], **settings).merge(
        data, num_samples=N, batch_size=4, progress=False)


def result_folder_bytes(result, folder: Path) -> dict[str, dict[str, bytes]]:
    result.save_pretrained(folder)
    return all_weight_bytes(folder)


# --------------------------------------------------------------------------- merge
def test_merge_images_from_a_save_to_disk_folder_equals_the_python_api(inputs, tmp_path, capsys):
    from transformers.utils import logging as tf_logging

    bars = tf_logging.is_progress_bar_enabled()
    out = tmp_path / "merged"
    code, stdout, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--dataset", inputs["image_disk"],
                               *IMAGE_ARGS, "--out", out)
    assert (code, stderr) == (0, "")  # no progress bars nor warnings when stderr is not a terminal
    assert stdout.strip() == f"merged 2 models with mudsc into {out}"
    assert tf_logging.is_progress_bar_enabled() == bars  # the library's state is restored
    import datasets

    expected = python_merge([inputs["vit0"], inputs["vit1"]], datasets.load_from_disk(str(inputs["image_disk"])),
                            method="mudsc", alpha=0.5, max_sweeps=2)
    assert all_weight_bytes(out) == result_folder_bytes(expected, tmp_path / "python")
    card = ModelCard.load(out / "README.md").data
    assert card.pipeline_tag == "image-classification" and "mudsc" in card.tags


def test_a_dataset_smaller_than_the_default_draw_is_read_whole(inputs, tmp_path, capsys):
    """No --num-samples and 24 rows: the 24 rows, not an error (an explicit 25 is one: "too few examples")."""
    out = tmp_path / "merged"
    options = IMAGE_ARGS[2:]  # without --num-samples
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--dataset", inputs["image_disk"],
                          *options, "--out", out)
    assert code == 0 and "fewer than num_samples" not in stderr, stderr
    assert json.loads((out / "merge_recipe.json").read_text())["calibration"]["num_samples"] == 24


def test_a_merge_without_data_ignores_the_sample_count(inputs, tmp_path, capsys):
    """--num-samples counts rows of --dataset; a data-free merge (weight matching, no repair) has none."""
    code, _, stderr = run(capsys, "merge", inputs["vit0"], inputs["vit1"], "--method", "weight-matching",
                          "--num-samples", "8", "--out", tmp_path / "merged")
    assert (code, stderr) == (0, "")


def test_a_data_free_method_aligns_parents_of_different_depths_on_the_dataset(inputs, tmp_path, capsys):
    """Weight matching needs no data, but layers of different depths are aligned on it: --dataset is read
    for that (it was dropped, and the merge failed with advice for the Python API)."""
    shallow = save_vit(tmp_path / "shallow", 1, ["apple", "pear"], num_hidden_layers=1)
    capsys.readouterr()  # only what the commands print
    code, _, stderr = run(capsys, "merge", inputs["vit0"], shallow, "--method", "weight-matching",
                          "--out", tmp_path / "no-data")
    assert code == 2 and stderr.strip() == ("hf-mudsc: error: aligning the layers of parents of different depths "
                                            "needs calibration data: give --dataset (or use --method weight-matching "
                                            "without --repair, for parents of one depth)")
    code, _, stderr = run(capsys, "merge", inputs["vit0"], shallow, "--method", "weight-matching", "--dataset",
                          inputs["image_disk"], "--out", tmp_path / "merged")
    assert code == 0, stderr
    assert json.loads((tmp_path / "merged" / "merge_recipe.json").read_text())["layer_alignment"]["layer_map"]


@pytest.fixture(scope="module")
def text_merge(inputs, tmp_path_factory) -> Path:
    """The text parents merged from the save_to_disk folder, in process."""
    out = tmp_path_factory.mktemp("text") / "merged"
    assert main(["merge", str(inputs["bert0"]), str(inputs["bert1"]), "--dataset", str(inputs["text_disk"]),
                 *TEXT_ARGS, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("source,extra", [("csv", ["--split", "train"]), ("jsonl", ["--column", "text"]),
                                          ("body_csv", ["--column", "body"])])
def test_merge_text_from_csv_and_jsonl_files(inputs, text_merge, tmp_path, capsys, source, extra):
    out = tmp_path / "merged"
    code, _, stderr = run(capsys, "merge", inputs["bert0"], inputs["bert1"], "--dataset", inputs[source],
                          *TEXT_ARGS, *extra, "--out", out)
    assert (code, not_warnings(stderr)) == (0, "")
    assert all_weight_bytes(out) == all_weight_bytes(text_merge)  # the same sentences, read from another format
    column = "body" if source == "body_csv" else "text"
    import json

    assert json.loads((out / "merge_recipe.json").read_text())["calibration"]["column"] == column


def test_column_is_needed_when_not_found_by_name(inputs, tmp_path, capsys):
    code, _, stderr = run(capsys, "merge", inputs["bert0"], inputs["bert1"], "--dataset", inputs["body_csv"],
                          *TEXT_ARGS, "--out", tmp_path / "merged")
    assert code == 2 and stderr.startswith("hf-mudsc: error: no text column found among body, label")
    assert not (tmp_path / "merged").exists()


def test_yaml_recipe_and_command_line_values_win(inputs, text_merge, tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"models: [{inputs['bert0']}, {inputs['bert1']}]\ndataset: {inputs['jsonl']}\nsplit: train\n"
        "num_samples: 20\nbatch_size: 4\nmethod: zipit\nzip_budget: 0.2\nout: from-yaml\nmax_shard_size: 20000\n")
    code, stdout, stderr = run(capsys, "merge", "--config", recipe, "--num-samples", N, "--out", "from-cli")
    assert (code, not_warnings(stderr)) == (0, "")
    assert not (tmp_path / "from-yaml").exists()
    saved = json.loads((tmp_path / "from-cli" / "merge_recipe.json").read_text())
    assert saved["config"]["method"] == "zipit" and saved["config"]["zip_budget"] == 0.2  # from the recipe
    assert saved["calibration"]["num_samples"] == N  # from the command line
    assert all_weight_bytes(tmp_path / "from-cli") == all_weight_bytes(text_merge)
    assert len(list((tmp_path / "from-cli").glob("model-*-of-*.safetensors"))) > 2  # max_shard_size from the recipe
    # the recipe alone: its own values
    code, _, stderr = run(capsys, "merge", "--config", recipe)
    assert (code, not_warnings(stderr)) == (0, "")
    assert json.loads((tmp_path / "from-yaml" / "merge_recipe.json").read_text())["calibration"]["num_samples"] == 20


def test_apply_gives_byte_identical_weights(text_merge, tmp_path, capsys):
    code, stdout, stderr = run(capsys, "apply", text_merge, "--out", tmp_path / "again")
    assert (code, not_warnings(stderr)) == (0, "")
    assert "re-applied" in stdout
    assert all_weight_bytes(tmp_path / "again") == all_weight_bytes(text_merge)
    assert (tmp_path / "again" / "README.md").read_text() == (text_merge / "README.md").read_text()


def test_apply_loads_the_parents_as_the_merge_did(inputs, tmp_path, capsys):
    """float16 parents merged with --torch-dtype float32: apply loads them in float32 again (the recipe
    keeps the dtype; apply loaded float16 and wrote another merge), and takes the merge's loading and
    writing options (--max-shard-size: a sharded merge came back as one file)."""
    from parents_on_disk import save_bert

    half = [save_bert(tmp_path / f"half{i}", i, list(BERT_LABELS[i]), dtype=torch.float16) for i in (0, 1)]
    out = tmp_path / "merged"
    code, _, stderr = run(capsys, "merge", *half, "--method", "weight-matching", "--torch-dtype", "float32",
                          "--max-shard-size", "100KB", "--out", out)
    assert code == 0, stderr
    assert json.loads((out / "merge_recipe.json").read_text())["parents_dtype"] == "float32"
    code, _, stderr = run(capsys, "apply", out, "--max-shard-size", "100KB", "--out", tmp_path / "again")
    assert code == 0, stderr
    assert all_weight_bytes(tmp_path / "again") == all_weight_bytes(out)
    assert len(list((tmp_path / "again").glob("model-*.safetensors"))) > 1


def test_a_merge_of_relative_folders_is_reapplied_from_anywhere(inputs, tmp_path, capsys, monkeypatch):
    """The recipe keeps local parents by absolute path: `apply` run from another folder finds them (a
    relative path would have been looked up on the Hub); a file's builder ("csv") is no dataset name."""
    monkeypatch.chdir(inputs["root"])
    out = tmp_path / "merged"
    code, _, stderr = run(capsys, "merge", "bert0", "bert1", "--dataset", inputs["csv"], *TEXT_ARGS, "--repair",
                          "none", "--out", out)
    assert (code, not_warnings(stderr)) == (0, "")
    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert recipe["parents"] == [str(inputs["bert0"].resolve()), str(inputs["bert1"].resolve())]
    assert recipe["calibration"]["name"] is None and ModelCard.load(out / "README.md").data.datasets is None
    joint = json.loads((out / "config.json").read_text())
    assert all("_name_or_path" not in task for task in joint["task_configs"])  # no local path in the joint config
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run(capsys, "apply", out, "--out", tmp_path / "again")
    assert (code, not_warnings(stderr)) == (0, "")
    assert all_weight_bytes(tmp_path / "again") == all_weight_bytes(out)


def test_non_empty_output_is_refused_without_overwrite_and_replaced_with_it(inputs, text_merge, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "old.txt").write_text("old")
    argv = ["merge", inputs["bert0"], inputs["bert1"], "--dataset", inputs["text_disk"], *TEXT_ARGS, "--out", out]
    code, _, stderr = run(capsys, *argv)
    assert code == 2 and stderr.count("\n") == 1 and "not empty" in stderr and "--overwrite" in stderr
    assert tree(out) == {"old.txt": b"old"} and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    code, _, stderr = run(capsys, *argv, "--overwrite")
    assert (code, not_warnings(stderr)) == (0, "")
    assert "old.txt" not in tree(out) and all_weight_bytes(out) == all_weight_bytes(text_merge)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# --------------------------------------------------------------------------- the Hub
@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        yield server


def check_one_commit(hub: FakeHub, repo: str, folder: Path) -> None:
    assert [c.repo_id for c in hub.commits] == [repo]
    files = hub.commits[0].files
    assert files == tree(folder)
    assert {"README.md", "config.json", "model.safetensors", "merge_recipe.json", "tasks/0/model.safetensors",
            "tasks/1/tokenizer.json"} <= files.keys()
    assert ModelCard(files["README.md"].decode()).data.base_model_relation == "merge"
    # every repo call carries the token; huggingface_hub's own unauthenticated registry fetch
    # (GET /api/agent-harnesses, answered 404 here) carries none
    repo_calls = [r for r in hub.requests if r.method == "POST"]
    assert [r.path for r in repo_calls][0] == "/api/repos/create" and repo_calls[-1].path.endswith("/commit/main")
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in repo_calls)
    assert all(r.headers.get("authorization") in (None, f"Bearer {TOKEN}") for r in hub.requests)
    assert not any(TOKEN.encode() in content for content in files.values())


def test_push_uploads_the_folder_in_one_commit(text_merge, hub, capsys):
    code, stdout, stderr = run(capsys, "push", text_merge, "me/merged", "--token", TOKEN)
    assert (code, not_warnings(stderr)) == (0, "")
    assert stdout.strip().startswith(f"pushed to {hub.url}/me/merged/commit/")
    check_one_commit(hub, "me/merged", text_merge)
    assert TOKEN not in stdout


def test_merge_with_push_to_hub(inputs, hub, tmp_path, capsys):
    out = tmp_path / "merged"
    code, stdout, stderr = run(capsys, "merge", inputs["bert0"], inputs["bert1"], "--dataset", inputs["csv"],
                               *TEXT_ARGS, "--out", out, "--push-to-hub", "me/pushed", "--private", "--token", TOKEN)
    assert (code, not_warnings(stderr)) == (0, "")
    assert out.is_dir() and f"pushed to {hub.url}/me/pushed/commit/" in stdout
    check_one_commit(hub, "me/pushed", out)
    assert hub.repos["me/pushed"].visibility == "private"


# --------------------------------------------------------------------------- errors
def merge(*parents_and_options):
    return ["merge", *parents_and_options]


ERRORS = {
    "missing parent": (lambda p, o: merge(p["root"] / "nope", p["vit1"], "--dataset", p["image_disk"], "--out", o),
                       ["parent folder", "nope", "not found"]),
    "folder without config": (lambda p, o: merge(p["no_config"], p["vit1"], "--dataset", p["image_disk"], "--out", o),
                              ["no config.json"]),
    "truncated weights": (lambda p, o: merge(p["vit0"], p["corrupt"], "--dataset", p["image_disk"], "--out", o),
                          ["cannot load the weights of parent", "corrupt", "truncated or corrupt"]),
    "incomplete weights": (lambda p, o: merge(p["vit0"], p["incomplete"], "--dataset", p["image_disk"], "--out", o),
                           ["parent", "incomplete", "lacks 1 of its model's weights", "layer", "checkpoint is incomplete"]),
    "different families": (lambda p, o: merge(p["vit0"], p["bert1"], "--dataset", p["image_disk"], "--out", o),
                           ["different families", "vit", "bert"]),
    "different tokenizers": (lambda p, o: merge(p["bert0"], p["bert_vocab"], "--dataset", p["text_disk"], "--out", o),
                             ["different tokenizers", "bert_vocab"]),
    "one parent": (lambda p, o: merge(p["vit0"], "--dataset", p["image_disk"], "--out", o), ["at least two models"]),
    "unsupported architecture": (lambda p, o: merge(p["gpt2"], p["vit1"], "--dataset", p["image_disk"], "--out", o),
                                 ["'gpt2' is not supported", "bert", "vit", "register_unit_map"]),
    "dataset file missing": (lambda p, o: merge(p["bert0"], p["bert1"], "--dataset", "data/missing.csv", "--out", o),
                             ["dataset file 'data/missing.csv' not found"]),
    "dataset missing": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["root"] / "no-data", "--out", o),
                        ["dataset", "no-data", "not found"]),
    "no dataset": (lambda p, o: merge(p["vit0"], p["vit1"], "--out", o), ["needs calibration data", "--dataset"]),
    "repair without dataset": (lambda p, o: merge(p["vit0"], p["vit1"], "--method", "weight-matching", "--repair",
                                                  "heads", "--out", o), ["repair heads needs calibration data"]),
    "unknown repair": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--repair", "bn",
                                          "--out", o), ["unknown repair 'bn'", "stats, lsq, heads"]),
    "wrong modality": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["text_disk"], "--out", o),
                       ["take image input", "text column 'text'"]),
    "missing column": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--column", "photo",
                                          "--out", o), ["no column 'photo'", "image, label"]),
    "empty save_to_disk": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["empty_disk"], "--out", o),
                           ["is empty"]),
    "empty csv": (lambda p, o: merge(p["bert0"], p["bert1"], "--dataset", p["empty_csv"], "--out", o), ["is empty"]),
    "too few examples": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--num-samples", 25,
                                            "--out", o), ["24 examples, fewer than num_samples=25"]),
    "alpha 1.5": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--alpha", 1.5, "--out", o),
                  ["alpha must be in [0, 1], got 1.5"]),
    "alpha not a number": (lambda p, o: merge(p["vit0"], p["vit1"], "--alpha", "half", "--out", o),
                           ["argument --alpha: expected a number, got 'half'"]),
    "bad shard size": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--max-shard-size",
                                          "lots", "--out", o), ["max_shard_size must be a byte count", "'lots'"]),
    "merge layers 99": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--merge-layers", 99,
                                           "--out", o), ["merge_layers=99 exceeds the parents' 2 layers"]),
    "zip budget -1": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--zip-budget", -1,
                                         "--out", o), ["zip_budget must be in [0, 1]"]),
    "num samples 0": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--num-samples", 0,
                                         "--out", o), ["num_samples must be a positive integer, got 0"]),
    "NaN weights": (lambda p, o: merge(p["vit0"], p["nan"], "--dataset", p["image_disk"], "--out", o),
                    ["NaN or infinite", "'vit.layers.1.mlp.fc1.weight'"]),
    "output is a parent": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"], "--out", p["vit0"],
                                              "--overwrite"), ["input folder"]),
    "output inside a parent": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"],
                                                  "--out", p["vit1"] / "merged"), ["input folder"]),
    "no output": (lambda p, o: merge(p["vit0"], p["vit1"], "--dataset", p["image_disk"]), ["--out"]),
    "unknown YAML field": (lambda p, o: ["merge", "--config", p["unknown_yaml"], "--out", o],
                           ["unknown fields: bogus"]),
    "token in YAML": (lambda p, o: ["merge", "--config", p["token_yaml"], "--out", o], ["holds a token"]),
    "YAML models not a list": (lambda p, o: ["merge", "--config", p["typed_yaml"], "--out", o],
                               ["'models' must be a list"]),
    "missing YAML": (lambda p, o: ["merge", "--config", p["root"] / "none.yaml", "--out", o], ["cannot read recipe"]),
    "apply a folder that is no merge": (lambda p, o: ["apply", p["vit0"], "--out", o], ["not a merge folder"]),
    "push a missing folder": (lambda p, o: ["push", p["root"] / "nope", "me/repo"], ["is not a folder"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_write_nothing(inputs, tmp_path, capsys, case):
    argv, fragments = ERRORS[case]
    before = tree(inputs["root"])
    out = tmp_path / "outputs" / "merged"  # not even its parent folder may appear
    code, stdout, stderr = run(capsys, *argv(inputs, out))
    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-mudsc: error: "), stderr
    assert "Traceback" not in stderr and TOKEN not in stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (tmp_path / "outputs").exists()
    assert list(tmp_path.iterdir()) == []
    assert tree(inputs["root"]) == before  # no output, no temporary folder, parents and data untouched


def test_load_calibration_dataset_reads_every_local_format(inputs):
    texts = [list(load_calibration_dataset(str(inputs[k]), "train")["text"]) for k in ("text_disk", "csv", "jsonl")]
    assert texts[0] == texts[1] == texts[2] and len(texts[0]) == 24


# --------------------------------------------------------------------------- the console script
def test_console_script_runs_in_a_subprocess(inputs, text_merge, tmp_path):
    script = Path(sys.executable).with_name("hf-mudsc")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "hf_mudsc.cli"]
    out = tmp_path / "merged"
    done = subprocess.run([*command, "merge", str(inputs["bert0"]), str(inputs["bert1"]), "--dataset",
                           str(inputs["jsonl"]), *TEXT_ARGS, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"merged 2 models with zipit into {out}"
    assert "Traceback" not in done.stderr and "Loading weights" not in done.stderr
    assert all_weight_bytes(out) == all_weight_bytes(text_merge)


def test_processes_that_accelerate_does_not_join_are_refused(inputs, tmp_path):
    """Two ranks launched by torchrun on CPUs without ACCELERATE_USE_CPU: accelerate runs each alone, and
    each would take itself for the main process and write the folder (transformers leaving out the
    weights of rank 1). Each rank stops with one line; nothing is written."""
    script = Path(sys.executable).with_name("hf-mudsc")
    if not script.is_file():
        pytest.skip("the console script is not installed beside this Python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--no-python",
                           str(script), "merge", str(inputs["bert0"]), str(inputs["bert1"]), "--dataset",
                           str(inputs["jsonl"]), *TEXT_ARGS, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    refused = "hf-mudsc: error: launched as 2 processes, but accelerate runs 1 (DistributedType.NO): on CPUs set " \
              "ACCELERATE_USE_CPU=true"
    assert done.returncode != 0 and done.stderr.count(refused) == 2, done.stderr[-2000:]
    assert not out.exists()


# --------------------------------------------------------------------------- options derived from MergeConfig
def sample_text(kind) -> str:
    """A command-line value of a type hint (a number where it takes one, else text)."""
    import types
    import typing

    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return sample_text(args[0])
    if typing.get_origin(kind) is typing.Literal:
        return str(args[-1])
    if typing.get_origin(kind) is tuple:
        return ",".join([sample_text(args[0])] * 2)
    return {int: "2", float: "0.25", str: "text"}[kind]


def captured_config(monkeypatch, argv) -> dict:
    """The MergeConfig fields the command passes to the merger (which is not run)."""
    seen = {}

    def capture(models, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt("captured")

    monkeypatch.setattr(MuDSCMerger, "from_pretrained", staticmethod(capture))
    assert main(argv) == 130
    return seen


def test_every_merge_config_field_is_an_option_and_a_yaml_field(monkeypatch, tmp_path, capsys):
    import dataclasses
    import typing

    import yaml

    from hf_mudsc.cli import _convert
    from hf_mudsc.config import MergeConfig

    hints = typing.get_type_hints(MergeConfig)
    names = [f.name for f in dataclasses.fields(MergeConfig)]
    argv = ["merge", "a", "b", "--out", str(tmp_path / "m")]
    for name in names:
        argv += [f"--{name.replace('_', '-')}", sample_text(hints[name])]
    from_cli = captured_config(monkeypatch, argv)
    assert sorted(from_cli) == sorted(names + ["token", "allow_pickle", "trust_remote_code"])
    for name in names:
        assert from_cli[name] == _convert(hints[name], sample_text(hints[name]), text=True), name
        assert MergeConfig.__doc__.count(f" {name}") and f"--{name.replace('_', '-')}" in build_help()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"models": ["a", "b"], "out": str(tmp_path / "m"),
                                      **{k: list(v) if isinstance(v, tuple) else v
                                         for k, v in from_cli.items() if k in names}}))
    assert captured_config(monkeypatch, ["merge", "--config", str(recipe)]) == from_cli
    capsys.readouterr()


def test_none_sets_a_number_that_may_be_none(monkeypatch, tmp_path):
    argv = ["merge", "a", "b", "--out", str(tmp_path / "m"), "--statistics-samples", "None",
            "--max-tokens-per-batch", "none", "--repair-samples", "64", "--repair", "none",
            "--repair-tokens-per-batch", "NONE"]
    seen = captured_config(monkeypatch, argv)
    assert seen["statistics_samples"] is None and seen["max_tokens_per_batch"] is None
    assert seen["repair_tokens_per_batch"] is None
    assert seen["repair_samples"] == 64 and seen["repair"] == ("none",)  # the config reads it as no repair
    assert "merge_layers" not in seen and "alpha" not in seen  # not given: the config's defaults


def build_help() -> str:
    from hf_mudsc.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("merge")).format_help()


def test_a_new_config_field_reaches_the_command_line_and_yaml_without_a_cli_edit(monkeypatch, tmp_path, capsys):
    """Fields as others add them: a tuple of strings, a number or 'auto' (left to the config to check)."""
    import dataclasses

    from hf_mudsc import cli
    from hf_mudsc.config import MergeConfig

    @dataclasses.dataclass(frozen=True)
    class Extended(MergeConfig):
        """How to merge.

        Args:
            repair: what to repair after the merge,
                as a list.
            budget: a share, or ``auto``.
        """

        repair: tuple[str, ...] = ()
        budget: float | Literal["auto"] | None = None

    monkeypatch.setattr(cli, "MergeConfig", Extended)
    assert cli.config_options(Extended)["repair"].help == "what to repair after the merge, as a list."
    assert "--repair REPAIR" in build_help() and "what to repair after the merge, as a list." in build_help()
    base = ["merge", "a", "b", "--out", str(tmp_path / "m")]
    got = captured_config(monkeypatch, base + ["--repair", "heads,norms", "--budget", "auto"])
    assert (got["repair"], got["budget"]) == (("heads", "norms"), "auto")
    assert captured_config(monkeypatch, base + ["--budget", "0.5"])["budget"] == 0.5
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("models: [a, b]\nrepair: [heads]\nbudget: null\n")
    got = captured_config(monkeypatch, ["merge", "--config", str(recipe), "--out", str(tmp_path / "m")])
    assert (got["repair"], got["budget"]) == (("heads",), None)
    for text, want in (("heads", ("heads",)), ("heads,norms", ("heads", "norms"))):  # as --repair takes it
        recipe.write_text(f"models: [a, b]\nrepair: {text}\n")  # (was refused: "must be a comma-separated list")
        got = captured_config(monkeypatch, ["merge", "--config", str(recipe), "--out", str(tmp_path / "m")])
        assert got["repair"] == want
    recipe.write_text("models: [a, b]\nrepair: {heads: 1}\n")
    assert main(["merge", "--config", str(recipe), "--out", str(tmp_path / "m")]) == 2
    assert "field 'repair' must be a comma-separated list of strings" in capsys.readouterr().err


def test_recipe_fields_take_the_command_lines_spelling_and_forms(monkeypatch, tmp_path):
    """merge-layers as --merge-layers spells it (was refused as unknown), one layer or "0,2" for a list."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("models: [a, b]\nmerge-layers: 1\nresidual_layers: 2\n")
    got = captured_config(monkeypatch, ["merge", "--config", str(recipe), "--out", str(tmp_path / "m")])
    assert (got["merge_layers"], got["residual_layers"]) == (1, (2,))
    recipe.write_text("models: [a, b]\nresidual_layers: '0,2'\n")
    assert captured_config(monkeypatch, ["merge", "--config", str(recipe), "--out", str(tmp_path / "m")])[
        "residual_layers"] == (0, 2)


def test_a_yaml_recipe_with_residual_layers_merges(inputs, tmp_path, capsys):
    import json

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"models: [{inputs['bert0']}, {inputs['bert1']}]\ndataset: {inputs['jsonl']}\n"
                      f"num_samples: {N}\nbatch_size: 4\nmethod: zipit\nresidual_layers: [0, 2]\n"
                      f"out: {tmp_path / 'merged'}\n")
    code, _, stderr = run(capsys, "merge", "--config", recipe)
    assert (code, not_warnings(stderr)) == (0, "")
    assert json.loads((tmp_path / "merged" / "merge_recipe.json").read_text())["config"]["residual_layers"] == [0, 2]


def test_demo_replaces_only_an_earlier_demo_and_refuses_other_folders_first(tmp_path, capsys, monkeypatch):
    """`hf-mudsc demo --out F` replaced any merge folder (a user's own merge) and failed on any other
    non-empty folder only after all its work; now: an earlier demo's folder is replaced, any other is
    refused at once unless --overwrite."""
    from hf_mudsc.demo import run as demo

    parents = [tmp_path / "cache" / "a", tmp_path / "cache" / "b"]
    monkeypatch.setattr(demo, "digit_parents", lambda cache_dir: (parents, None))
    monkeypatch.setattr(demo.MuDSCMerger, "from_pretrained", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("ran")))
    mine = tmp_path / "my-merge"
    mine.mkdir()
    (mine / "merge_recipe.json").write_text(json.dumps({"parents": ["/models/bert-a", "/models/bert-b"]}))
    code, _, stderr = run(capsys, "demo", "--out", mine)
    assert code == 2 and "not empty" in stderr and "ran" not in stderr and len(stderr.strip().splitlines()) == 1
    (mine / "merge_recipe.json").write_text(json.dumps({"parents": [str(p.resolve()) for p in parents]}))
    with pytest.raises(RuntimeError, match="ran"):  # an earlier demo's folder: the demo goes on
        main(["demo", "--out", str(mine)])
    (mine / "merge_recipe.json").write_text("{}")
    with pytest.raises(RuntimeError, match="ran"):
        main(["demo", "--out", str(mine), "--overwrite"])


def test_a_local_dataset_folder_is_no_dataset_name(tmp_path):
    """A folder of data files is read by its files' builder, and datasets names it after the folder
    (snake-cased: "my_calib_data"), which the card's metadata then gave as a Hub dataset."""
    from hf_mudsc.cli import load_calibration_dataset

    folder = tmp_path / "MyCalibData"
    folder.mkdir()
    (folder / "part.csv").write_text("text\nthe good game\na bad law\n")
    assert load_calibration_dataset(str(folder)).info.dataset_name is None


def test_the_version_is_one_flag_away(capsys):
    from hf_mudsc import __version__

    code, stdout, _ = run(capsys, "--version")
    assert (code, stdout.strip()) == (0, f"hf-mudsc {__version__}")

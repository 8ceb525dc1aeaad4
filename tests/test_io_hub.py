"""Pushing a merge folder to a local fake Hub (tests/hub_server.py): one commit, card included."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
from huggingface_hub import ModelCard, constants
from safetensors.torch import save_file

from hf_mudsc.io.card import build_model_card
from hf_mudsc.io.hub import push_folder
from hf_mudsc.io.writer import OutputError, atomic_output_dir

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import FakeHub  # noqa: E402

TOKEN = "hf_" + "FakeToken0123456789" * 2
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as server:
        yield server


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "merged"
    card = build_model_card(
        base_models=["org/a", "org/b"],
        method="mudsc",
        method_title="MuDSC",
        recipe={"method": "mudsc", "alpha": 0.5, "token": TOKEN},
        pipeline_tag="text-classification",
        calibration={"name": "glue", "num_samples": 64},
    )
    shards = {f"w{i}": f"model-0000{i + 1}-of-00003.safetensors" for i in range(3)}  # transformers' layout
    with atomic_output_dir(out) as tmp:
        for i, (name, shard) in enumerate(shards.items()):
            save_file({name: torch.full((64,), float(i))}, str(tmp / shard))
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
        (tmp / "tasks" / "0").mkdir(parents=True)
        save_file({"w": torch.ones(2)}, str(tmp / "tasks" / "0" / "model.safetensors"))
        (tmp / "config.json").write_text('{"model_type": "bert"}')
        card.save(tmp / "README.md")
    return out


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("xet", [True, False], ids=["xet-pipeline", "legacy-commit"])
def test_push_is_one_commit_with_card_and_weights(
    hub: FakeHub, folder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, xet: bool
) -> None:
    """With hf_xet installed upload_folder streams through a pipeline, else it calls create_commit."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)
    caplog.set_level(logging.DEBUG)
    url = push_folder(folder, "me/merged", token=TOKEN, private=True, endpoint=hub.url)

    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert url.startswith(f"{hub.url}/me/merged/commit/")
    assert (commit.repo_id, commit.revision, commit.summary) == ("me/merged", "main", "Upload merged model (hf-mudsc)")
    assert commit.files == _local_files(folder)
    assert {"README.md", "model.safetensors.index.json", "tasks/0/model.safetensors"} <= commit.files.keys()
    assert hub.repos["me/merged"].visibility == "private"

    metadata = ModelCard(commit.files["README.md"].decode()).data
    assert metadata.base_model == ["org/a", "org/b"] and metadata.base_model_relation == "merge"

    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)
    assert not any(TOKEN.encode() in content for content in commit.files.values())
    assert TOKEN not in caplog.text
    assert [r.status for r in hub.requests] == [200] * len(hub.requests)
    paths = [r.path for r in hub.requests]
    assert paths[0] == "/api/repos/create" and paths[-1] == "/api/models/me/merged/commit/main"
    assert "/api/models/me/merged/preupload/main" in paths and "/api/validate-yaml" in paths


def test_push_to_existing_repo_and_branch(hub: FakeHub, folder: Path) -> None:
    push_folder(folder, "me/merged", token=TOKEN, endpoint=hub.url)
    push_folder(folder, "me/merged", token=TOKEN, endpoint=hub.url, revision="dev", commit_message="again")
    assert [(c.revision, c.summary) for c in hub.commits] == [("main", "Upload merged model (hf-mudsc)"), ("dev", "again")]
    assert hub.repos["me/merged"].branches["dev"].keys() == _local_files(folder).keys()


def test_a_push_over_an_earlier_merge_replaces_its_weights_and_task_folders(hub: FakeHub, folder: Path) -> None:
    """A second push to the same repo deletes the earlier merge's weights and task folders that the new
    folder does not hold (sharded weights beside a new single file, a third task: a loader read the
    stale file), and keeps the repo's other files (a user's notes and checkpoints) and .gitattributes."""
    import shutil

    from huggingface_hub import HfApi

    push_folder(folder, "me/merged", token=TOKEN, endpoint=hub.url)
    for name in ("notes.md", "checkpoints/step-1/model.safetensors"):  # the user's own files
        HfApi(endpoint=hub.url, token=TOKEN).upload_file(path_or_fileobj=b"mine", path_in_repo=name,
                                                         repo_id="me/merged")
    hub.repos["me/merged"].branches["main"][".gitattributes"] = b"*.safetensors filter=lfs"
    for shard in folder.glob("model-*.safetensors"):
        shard.unlink()
    (folder / "model.safetensors.index.json").unlink()
    save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
    shutil.rmtree(folder / "tasks")
    push_folder(folder, "me/merged", token=TOKEN, endpoint=hub.url)
    files = hub.repos["me/merged"].branches["main"]
    assert files.keys() == {*_local_files(folder), "notes.md", "checkpoints/step-1/model.safetensors", ".gitattributes"}
    assert len(hub.commits) == 4 and "tasks/0/model.safetensors" in hub.commits[-1].deleted


def test_hf_endpoint_constant_is_the_default(hub: FakeHub, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    push_folder(folder, "me/default-endpoint", token=TOKEN)
    assert [c.repo_id for c in hub.commits] == ["me/default-endpoint"]


def test_hf_endpoint_environment_variable(hub: FakeHub, folder: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, PYTHONPATH=str(REPO_ROOT))
    script = "import sys; from hf_mudsc.io.hub import push_folder; print(push_folder(sys.argv[1], 'me/env', token=sys.argv[2]))"
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder), TOKEN], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"{hub.url}/me/env/commit/")
    assert [c.repo_id for c in hub.commits] == ["me/env"]
    assert TOKEN not in done.stdout + done.stderr


def test_refuses_folder_without_card(hub: FakeHub, folder: Path) -> None:
    (folder / "README.md").unlink()
    with pytest.raises(OutputError, match="has no README.md"):
        push_folder(folder, "me/merged", token=TOKEN, endpoint=hub.url)
    assert hub.requests == []


def test_refuses_pickle_and_missing_folder(hub: FakeHub, folder: Path) -> None:
    (folder / "tasks" / "0" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(OutputError, match="pytorch_model.bin"):
        push_folder(folder, "me/merged", token=TOKEN, endpoint=hub.url)
    with pytest.raises(OutputError, match="is not a folder"):
        push_folder(folder / "nope", "me/merged", token=TOKEN, endpoint=hub.url)
    assert hub.requests == []


def test_fake_hub_rejects_invalid_card(hub: FakeHub, folder: Path) -> None:
    (folder / "README.md").write_text("---\n- not a mapping\n---\nbody\n")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        push_folder(folder, "me/merged", token=TOKEN, endpoint=hub.url)
    assert hub.commits == []


def test_a_hub_that_does_not_answer_is_a_one_line_connection_error(
    folder: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens at the endpoint: a ``ConnectionError`` naming it (the command line: one line,
    exit 2), not the HTTP client's own exception and traceback."""
    import socket

    from hf_mudsc.cli import main

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ConnectionError, match=f"cannot reach the Hub at {endpoint}"):
        push_folder(folder, "me/merged", token=TOKEN, endpoint=endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    code = main(["push", str(folder), "me/merged", "--token", TOKEN])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("hf-mudsc: error: cannot reach the Hub"), err

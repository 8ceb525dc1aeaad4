"""All-or-nothing output folders that never hold pickle files."""
from __future__ import annotations

from pathlib import Path

import pytest

from hf_mudsc.io.writer import OutputError, assert_no_pickle, atomic_output_dir, check_output_dir


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_success_moves_temp_into_place(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "merged"
    with atomic_output_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".merged.tmp-")
        (tmp / "config.json").write_text("{}")
    assert _entries(out) == ["config.json"]
    assert _entries(out.parent) == ["merged"]


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    with atomic_output_dir(out) as tmp:
        (tmp / "a.json").write_text("{}")
    assert _entries(out) == ["a.json"]


def test_overwrite_replaces_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.json").write_text("{}")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.json").write_text("{}")
    assert _entries(out) == ["new.json"]
    assert _entries(tmp_path) == ["merged"]


def test_refuses_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="exists and is not empty; pass overwrite=True") as info:
        with atomic_output_dir(out):
            pytest.fail("the body must not run")
    assert "\n" not in str(info.value)
    assert _entries(out) == ["keep.txt"]


def test_refuses_file_at_path_even_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    out.write_text("not a folder")
    with pytest.raises(OutputError, match="is not a folder"):
        with atomic_output_dir(out, overwrite=True):
            pass
    assert out.read_text() == "not a folder"


def test_refuses_a_path_below_a_file_before_the_work(tmp_path: Path) -> None:
    """Checked with the others before a merge (was a bare 'File exists' after it)."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match=r"cannot make .*merged: .*notes.txt is a file, not a folder"):
        check_output_dir(tmp_path / "notes.txt" / "sub" / "merged")
    assert (tmp_path / "notes.txt").read_text() == "x"


@pytest.mark.parametrize("relation", ["same", "inside", "containing"])
def test_refuses_protected_parent_folders(tmp_path: Path, relation: str) -> None:
    parent = tmp_path / "parents" / "model_a"
    parent.mkdir(parents=True)
    (parent / "config.json").write_text("{}")
    out = {"same": parent, "inside": parent / "merged", "containing": tmp_path / "parents"}[relation]
    with pytest.raises(OutputError, match="input folder"):
        with atomic_output_dir(out, overwrite=True, protected=[parent, "org/hub-id-not-a-folder"]):
            pytest.fail("the body must not run")
    assert _entries(parent) == ["config.json"]


def test_hub_ids_in_protected_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with atomic_output_dir("merged", protected=["org/model-a"]) as tmp:
        (tmp / "x.json").write_text("{}")
    assert _entries(tmp_path / "merged") == ["x.json"]


def test_refuses_to_replace_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "f").write_text("x")
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(OutputError, match="current working directory"):
        with atomic_output_dir(tmp_path, overwrite=True):
            pass


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_write_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "deep" / "merged"
    with pytest.raises(type(error)):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.safetensors").write_bytes(b"partial")
            raise error
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_overwrite_keeps_previous_target(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.json").write_text("old")
    with pytest.raises(type(error)):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "new.json").write_text("new")
            raise error
    assert _entries(tmp_path) == ["merged"]
    assert (out / "old.json").read_text() == "old"


def test_pickle_in_output_aborts_the_move(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    with pytest.raises(OutputError, match=r"pickle files in the output \(sub/pytorch_model.bin\)"):
        with atomic_output_dir(out) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "pytorch_model.bin").write_bytes(b"x")
    assert _entries(tmp_path) == []


def test_assert_no_pickle_accepts_safetensors(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert_no_pickle(tmp_path)
    (tmp_path / "weights.PT").write_bytes(b"x")
    with pytest.raises(OutputError, match="weights.PT"):
        assert_no_pickle(tmp_path)

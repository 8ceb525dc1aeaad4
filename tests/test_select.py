"""method="auto": candidates scored by agreement with their parents on held-out calibration data."""
from __future__ import annotations

import pytest
import torch

from conftest import outputs, tiny_inputs, tiny_model
from test_apply import permuted_copy
from hf_mudsc import MuDSCMerger
from hf_mudsc.config import ConfigError
from hf_mudsc.select import CANDIDATES


def calibration(model, n=6, size=8):
    return [tiny_inputs(model, batch=size, seed=300 + i) for i in range(n)]


@pytest.mark.parametrize("kind", ["vit-cls", "bert-seq", "bert-base"])
def test_auto_finds_the_permutation_of_a_permuted_copy(kind):
    """A parent and its function-preserving permutation: every candidate that matches units agrees
    perfectly with both parents, plain averaging does not; auto returns a perfect one, the same on
    a rerun."""
    a = tiny_model(kind, seed=0)
    b, _ = permuted_copy(a, seed=5)
    data = calibration(a)
    runs = []
    for _ in range(2 if kind == "vit-cls" else 1):
        merger = MuDSCMerger.from_pretrained([a, b], "auto", max_sweeps=1)
        result = merger.merge(data, num_samples=48, progress=False)
        rows = {r["candidate"]: r for r in result.selection}
        assert list(rows) == [name for name, _ in CANDIDATES]
        chosen = [r["candidate"] for r in result.selection if r.get("chosen")]
        assert len(chosen) == 1 and chosen[0] != "average"
        assert rows["average"]["score"] < rows[chosen[0]]["score"]
        assert rows[chosen[0]]["score"] == pytest.approx(1.0 if kind == "bert-base" else 0.0, abs=1e-6)
        x = tiny_inputs(a, batch=3, seed=9)  # (a base model's outputs are in the merged frame: its score says it)
        for model, parent in zip(result.task_models if kind != "bert-base" else [], (a, b)):
            torch.testing.assert_close(outputs(model, x), outputs(parent, x), rtol=1e-5, atol=1e-5)
        scores = [{k: v for k, v in r.items() if k != "seconds"} for r in result.selection]
        runs.append((chosen[0], scores, result.config.to_dict()))
    assert all(run == runs[0] for run in runs)


def test_auto_holds_out_calibration_samples_and_records_the_choice(tmp_path):
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "auto", holdout=0.25, max_sweeps=1)
    result = merger.merge(calibration(a), num_samples=48, progress=False)
    # 6 ready batches of 8: a quarter of them (2) held out, the statistics from the other 4
    assert result.calibration["part"] == "fit: 4 of the drawn batches"
    assert result.calibration["heldout"] == "held-out: 2 of the drawn batches"
    assert result.calibration["samples_per_space"]["layer.0.ffn"] == 4 * 8 * 17  # 16 patches and the CLS token
    assert result.config.method != "auto"  # the result carries the chosen recipe
    assert result.recipe()["selection"] == result.selection
    best = max(result.selection, key=lambda r: r["score"])
    assert best.get("chosen")


@pytest.mark.parametrize("settings", [dict(alpha=0.5), dict(mode="zip"), dict(zip_budget=0.5), dict(holdout=1.0)])
def test_auto_refuses_settings_it_chooses(settings):
    with pytest.raises(ConfigError):
        MuDSCMerger.from_pretrained([tiny_model("vit-cls", 0), tiny_model("vit-cls", 1)], "auto", **settings)


def test_auto_needs_data():
    merger = MuDSCMerger.from_pretrained([tiny_model("vit-cls", 0), tiny_model("vit-cls", 1)], "auto")
    with pytest.raises(ValueError, match="needs calibration data"):
        merger.merge(progress=False)


def test_card_shows_every_candidate_and_the_choice(tmp_path):
    a, b = tiny_model("vit-cls", seed=0, dtype=torch.float32), tiny_model("vit-cls", seed=1, dtype=torch.float32)
    result = MuDSCMerger.from_pretrained([a, b], "auto", max_sweeps=1).merge(calibration(a), num_samples=32,
                                                                           progress=False)
    card = (result.save_pretrained(tmp_path / "out") / "README.md").read_text()
    assert "Automatic choice" in card
    for name, _ in CANDIDATES:
        assert name in card


def test_a_reapplied_automatic_choice_keeps_its_table(tmp_path):
    from hf_mudsc import reapply
    from parents_on_disk import image_dataset, vit_parents

    folders = vit_parents(tmp_path / "parents")
    result = MuDSCMerger.from_pretrained([str(f) for f in folders], "auto", repair="none", max_sweeps=1).merge(
        image_dataset(16), num_samples=16, batch_size=8, progress=False)
    again = reapply(result.save_pretrained(tmp_path / "out"))
    assert again.selection == result.selection and any(r.get("chosen") for r in again.selection)
    assert "Automatic choice" in (again.save_pretrained(tmp_path / "again") / "README.md").read_text()

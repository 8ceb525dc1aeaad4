"""Accelerate (DESIGN §3.2): a two-process CPU run (``accelerate.debug_launcher``, gloo) shards the
calibration data by rank, reduces the moments exactly and gives the single-process merge; parents
loaded with a ``device_map`` merge like plain ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_mudsc import MuDSCMerger
from parents_on_disk import BERT_LABELS, all_weights, assert_weights_close, save_bert, text_dataset

N, BS = 19, 4  # an odd count: the two ranks get 10 and 9 examples (uneven last batches)
STATS = 13  # the statistics read the first 13 (ready batches: the fourth batch cut), the repairs all 19
SETTINGS = dict(method="mudsc", alpha=0.5, max_sweeps=1, statistics_samples=STATS)
# The ranks run one thread each (``run_fresh``), the reference as many as torch takes: float64
# kernels that split their sums differently agree to rounding, which the repairs' least squares
# amplify; a wrong shard or a double count moves weights by percents.
WEIGHT_TOL = 1e-9


@pytest.fixture(scope="module")
def parents(tmp_path_factory) -> list[str]:
    """float64 parents, so that a different batching changes activations only at rounding level."""
    root = tmp_path_factory.mktemp("parents")
    return [str(save_bert(root / f"bert{i}", i, list(BERT_LABELS[i]), dtype=torch.float64)) for i in range(2)]


def ready_batches(parent: str) -> list[dict[str, torch.Tensor]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(parent)
    texts = text_dataset(N)["text"]
    return [dict(tok(texts[i:i + BS], padding=True, return_tensors="pt")) for i in range(0, N, BS)]


def merge(parents, data, accelerator=None, **load):
    merger = MuDSCMerger.from_pretrained(parents, **SETTINGS, **load)
    result = merger.merge(data, num_samples=N, batch_size=BS, accelerator=accelerator, progress=False)
    return merger, result


def flatten(merger, result) -> dict[str, torch.Tensor]:
    """What the test compares: every task's merged weights, each space's correlation, sample counts."""
    out = {f"task{i}/{k}": v.clone(memory_format=torch.contiguous_format)  # standalone tensors for save_file
           for i in range(2) for k, v in result.weights.task_state_dict(i).items()}
    out.update({f"corr/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in merger._activation.items()})
    out.update({f"n/{k}": torch.tensor(v) for k, v in merger.calibration["samples_per_space"].items()})
    return out


def calibration_sets(parents) -> dict:
    return {"dataset": text_dataset(N), "batches": ready_batches(parents[0])}


@pytest.fixture(scope="module")
def single(parents) -> dict[str, tuple]:
    """The single-process merges (merger, result) of each calibration set."""
    return {name: merge(parents, data) for name, data in calibration_sets(parents).items()}


def launch_two_ranks(parents: list[str], results: Path) -> None:
    """Run the merge on two CPU processes (``debug_launcher``: forked, gloo); the main rank writes."""
    from accelerate import debug_launcher

    def on_each_rank() -> None:  # runs in two forked processes
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True, mixed_precision="no")
        assert accelerator.num_processes == 2
        for name, data in calibration_sets(parents).items():
            merger, result = merge(parents, data, accelerator)
            flat = flatten(merger, result)
            # every rank holds the reduced statistics and the same merge
            checksum = torch.tensor([float(sum(v.double().sum() for v in flat.values()))], dtype=torch.float64)
            sums = accelerator.gather(checksum)
            if accelerator.is_main_process:  # only the main process writes (the caller's job)
                save_file(flat, str(results / f"{name}.safetensors"))
                save_file({"sums": sums.contiguous()}, str(results / f"{name}-ranks.safetensors"))
                result.save_pretrained(results / f"{name}-merged")
            accelerator.wait_for_everyone()

    debug_launcher(on_each_rank, num_processes=2)


def launch_cli_on_two_ranks(argv: list[str]) -> None:
    """``hf-mudsc merge`` as ``accelerate launch`` would run it: every rank, one writer."""
    from accelerate import debug_launcher

    from hf_mudsc.cli import main

    def on_each_rank() -> None:
        code = main(argv)
        if code:
            raise SystemExit(code)

    debug_launcher(on_each_rank, num_processes=2)


def run_fresh(*args: str) -> None:
    """Run this file in a fresh interpreter: debug_launcher forks, and a child forked from a
    process that already ran OpenMP-parallel torch code (any earlier test) hangs in libgomp."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_give_the_single_process_merge(parents, single, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    run_fresh(*parents, str(results))

    assert sorted(p.name for p in results.iterdir()) == sorted(
        f"{n}{suffix}" for n in ("dataset", "batches") for suffix in (".safetensors", "-ranks.safetensors", "-merged"))
    for name, (merger, result) in single.items():
        sums = load_file(str(results / f"{name}-ranks.safetensors"))["sums"]
        assert sums.shape == (2,) and sums[0] == sums[1]
        multi = load_file(str(results / f"{name}.safetensors"))
        expected = flatten(merger, result)
        assert multi.keys() == expected.keys()
        for key in (k for k in expected if k.startswith("n/")):  # each example counted once, on one rank
            assert int(multi[key]) == int(expected[key]), key
        assert int(expected["n/pooler"]) == STATS and [r["samples"] for r in result.repairs] == [N, N, N]
        for key in (k for k in expected if k.startswith("corr/")):
            np.testing.assert_allclose(multi[key].numpy(), expected[key].numpy(), rtol=1e-10, atol=1e-12, err_msg=key)
        tasks = [k for k in expected if k.startswith("task")]
        assert_weights_close({k: multi[k] for k in tasks}, {k: expected[k] for k in tasks}, WEIGHT_TOL)
        assert_weights_close(all_weights(results / f"{name}-merged"), all_weights(result.save_pretrained(tmp_path / name)),
                             WEIGHT_TOL)


@pytest.mark.parametrize("device_map", ["cpu", {"bert.embeddings": "cpu", "bert.encoder": "cpu",
                                             "bert.pooler": "cpu", "classifier": "cpu"}], ids=["cpu", "per-module"])
def test_parents_loaded_with_a_device_map_merge_like_plain_ones(parents, single, device_map):
    """CPU is the only device here; transformers 5 sets no ``hf_device_map`` for a one-device map."""
    mapped_merger, mapped = merge(parents, text_dataset(N), device_map=device_map)
    assert all(p.model.device.type == "cpu" for p in mapped_merger.parents)
    expected, got = flatten(*single["dataset"]), flatten(mapped_merger, mapped)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_parents_offloaded_to_disk_are_refused_with_a_clear_message(parents):
    from hf_mudsc.loading import ParentError

    offload = {"bert.embeddings": "cpu", "bert.encoder": "cpu", "bert.pooler": "disk", "classifier": "cpu"}
    with pytest.raises(ParentError, match=r"parameters offloaded by its device_map \(e.g. 'bert.pooler.dense"):
        MuDSCMerger.from_pretrained(parents, **SETTINGS, device_map=offload)


def test_cli_under_two_processes_writes_once_the_single_process_merge(parents, tmp_path):
    from hf_mudsc.cli import main

    data = tmp_path / "calib"
    text_dataset(N).save_to_disk(str(data))
    argv = ["merge", *parents, "--dataset", str(data), "--num-samples", str(N), "--batch-size", str(BS),
            "--max-sweeps", "1"]
    run_fresh("cli", *argv, "--out", str(tmp_path / "two"))
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert_weights_close(all_weights(tmp_path / "two"), all_weights(tmp_path / "one"), WEIGHT_TOL)


def test_cli_under_two_processes_aligns_parents_of_different_depths_as_one_process(parents, tmp_path):
    """The layers of parents of different depths are aligned on every calibration row, by the main
    process, and every rank takes that alignment (was refused: 'call align()', which the command
    line cannot)."""
    from hf_mudsc.cli import main

    deep = save_bert(tmp_path / "deep", 2, list(BERT_LABELS[1]), dtype=torch.float64, num_hidden_layers=3)
    data = tmp_path / "calib"
    text_dataset(N).save_to_disk(str(data))
    argv = ["merge", parents[0], str(deep), "--dataset", str(data), "--num-samples", str(N), "--batch-size",
            str(BS), "--max-sweeps", "1"]
    run_fresh("cli", *argv, "--out", str(tmp_path / "two"))
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    recipes = [json.loads((tmp_path / f / "merge_recipe.json").read_text()) for f in ("two", "one")]
    assert recipes[0]["layer_alignment"] == recipes[1]["layer_alignment"] is not None
    assert_weights_close(all_weights(tmp_path / "two"), all_weights(tmp_path / "one"), WEIGHT_TOL)


if __name__ == "__main__":  # python test_accelerate.py PARENT PARENT RESULTS | cli ARGS...
    if sys.argv[1] == "cli":
        launch_cli_on_two_ranks(sys.argv[2:])
    else:
        launch_two_ranks(sys.argv[1:3], Path(sys.argv[3]))

"""Loading parents: a processor that is saved but unreadable is an error, one that is missing is
reported (its compatibility cannot be checked); load errors keep their cause, and out-of-memory
errors and bugs are not turned into 'cannot load the weights'."""
from __future__ import annotations

import shutil

import pytest
import torch
import transformers

from hf_mudsc import MuDSCMerger
from hf_mudsc.cli import main
from hf_mudsc.loading import ParentError, load_parent
from hf_mudsc.statistics import MergeQualityWarning
from parents_on_disk import bert_parents


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("loading")
    a, b = bert_parents(root)
    bare = root / "bare"
    shutil.copytree(b, bare)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bare / f).unlink()
    broken = root / "broken"
    shutil.copytree(b, broken)
    (broken / "tokenizer.json").write_text("{not json")
    return {"a": a, "b": b, "bare": bare, "broken": broken}


def test_a_parent_without_a_tokenizer_has_none_and_the_unchecked_pair_is_reported(parents):
    assert load_parent(str(parents["bare"])).processor is None  # not an empty tokenizer built from the config
    with pytest.warns(MergeQualityWarning, match="cannot check that the parents' tokenizers agree: '.*bare' has none"):
        MuDSCMerger.from_pretrained([str(parents["a"]), str(parents["bare"])], "weight-matching")


def test_a_saved_tokenizer_that_cannot_be_read_is_an_error(parents):
    with pytest.raises(ParentError, match="cannot load the tokenizer saved with parent '.*broken'.*fix or remove"):
        load_parent(str(parents["broken"]))


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"), KeyError("a bug")])
def test_out_of_memory_and_bugs_are_not_load_errors(parents, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(transformers.BertForSequenceClassification, "from_pretrained", fail)
    with pytest.raises(type(error)):
        load_parent(str(parents["a"]))


def test_a_load_error_keeps_its_cause(parents, monkeypatch):
    cause = OSError("disk unreadable")

    def fail(*args, **kwargs):
        raise cause

    monkeypatch.setattr(transformers.BertForSequenceClassification, "from_pretrained", fail)
    with pytest.raises(ParentError, match="cannot load the weights of parent .*disk unreadable") as info:
        load_parent(str(parents["a"]))
    assert info.value.__cause__ is cause


def test_the_command_line_says_out_of_memory_and_lets_bugs_through(parents, monkeypatch, tmp_path, capsys):
    argv = ["merge", str(parents["a"]), str(parents["b"]), "--method", "weight-matching", "--out", str(tmp_path / "m")]

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.BertForSequenceClassification, "from_pretrained", oom)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hf-mudsc: error: out of memory (CUDA out of memory.")
    assert "--batch-size" in err

    def bug(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(transformers.BertForSequenceClassification, "from_pretrained", bug)
    with pytest.raises(AttributeError, match="no attribute 'shape'"):  # a traceback, not a one-line 'cannot load'
        main(argv)
    assert not (tmp_path / "m").exists()


def test_loaded_models_with_nan_weights_are_refused_as_folders_are():
    """A model given in memory skipped the check: an average merge wrote NaN, other methods failed
    inside the solve naming no parent."""
    from conftest import tiny_model

    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    with torch.no_grad():
        b.classifier.weight[0, 0] = float("nan")
    with pytest.raises(ParentError, match="has NaN or infinite values in 'classifier.weight'"):
        MuDSCMerger.from_pretrained([a, b], "average")


def test_a_merge_that_gives_non_finite_weights_is_refused(monkeypatch):
    """Nothing checked the merged weights (degenerate calibration data drove the stats repair to
    weights of 700 in float32, near overflow in float16)."""
    import hf_mudsc.merger as merger_module
    from conftest import tiny_inputs, tiny_model

    def overflowing(names, parents, maps, transforms, weights, *args, **kwargs):
        next(iter(weights.shared.values())).mul_(float("inf"))
        return []

    monkeypatch.setattr(merger_module, "apply_repairs", overflowing)
    a, b = tiny_model("bert-seq", seed=0), tiny_model("bert-seq", seed=1)
    merger = MuDSCMerger.from_pretrained([a, b], "average", repair="stats")
    with pytest.raises(ValueError, match=r"the merge gave NaN or infinite values in '.*' after the repairs \(stats\)"):
        merger.merge([tiny_inputs(a, batch=8)], progress=False)


@pytest.mark.parametrize("name, dtype", [("torch.float16", torch.float16), ("fp16", torch.float16),
                                         ("bf16", torch.bfloat16), ("float64", torch.float64)])
def test_dtype_names_as_users_write_them(parents, name, dtype):
    """transformers takes only some names (torch.float16 and fp16 were refused with its message, which
    lists none of them); an unknown one is refused naming those that work."""
    assert load_parent(str(parents["a"]), torch_dtype=name).model.dtype == dtype
    with pytest.raises(ParentError, match="torch_dtype 'fp17' is not a dtype: use one of auto, float32"):
        load_parent(str(parents["a"]), torch_dtype="fp17")

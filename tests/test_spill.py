"""The spill store: tensors written out of memory by key and read back as the same bits."""
import pytest
import torch

from hf_mudsc.spill import Spill


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64,
                                   torch.bool])
def test_a_tensor_read_back_is_a_new_tensor_of_the_same_bits(dtype):
    store = Spill()
    x = (torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(0)) * 100).to(dtype)
    assert store.put("x", x[:, 1:4])  # a view: its own elements only
    y = store.get("x")
    assert y.dtype == dtype and y.shape == (7, 3, 3) and torch.equal(y, x[:, 1:4])
    y.zero_() if dtype != torch.bool else y.logical_not_()
    assert torch.equal(store.get("x"), x[:, 1:4])  # each read is a new tensor: a change to one stays there


def test_a_key_written_again_reuses_its_place_and_others_keep_theirs():
    store = Spill()
    a, b = torch.arange(12.0).reshape(3, 4), torch.arange(5.0)
    store.put("a", a), store.put("b", b)
    size = store._end
    store.put("a", -a)  # as many bytes: the same place
    assert store._end == size and torch.equal(store.get("a"), -a) and torch.equal(store.get("b"), b)
    store.put("a", torch.ones(5, 5))  # more bytes: a new place
    assert store._end == size + 100 and torch.equal(store.get("a"), torch.ones(5, 5)) and torch.equal(store.get("b"), b)
    assert "a" in store and "c" not in store


def test_tensors_off_the_cpu_and_every_tensor_after_a_failed_write_are_refused(monkeypatch):
    store = Spill()
    assert not store.put("meta", torch.empty(3, device="meta")) and "meta" not in store

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hf_mudsc.spill.tempfile.TemporaryFile", full)
    assert not store.put("x", torch.ones(3)) and "x" not in store
    monkeypatch.undo()
    assert not store.put("y", torch.ones(3))  # refused from then on: the caller keeps its tensors in memory

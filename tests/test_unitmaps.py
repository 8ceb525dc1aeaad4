"""Unit maps: coverage of every parameter, validation, registry."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from hf_mudsc.unitmaps import (
    EMBEDDINGS, Heads, Member, MergeSpace, UnitMap, UnitMapError, register_unit_map, supported_model_types,
    unit_map_for, unit_map_of,
)
from hf_mudsc.unitmaps.vit import VIT


def shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def test_every_axis_of_a_hidden_size_is_covered(kind):
    """Each parameter axis whose length is a hidden width belongs to exactly one space
    (except the label axis of heads and vocab/position axes, which are never that long here)."""
    model = tiny_model(kind, num_labels=3)
    umap = unit_map_of(model)
    covered = {(m.param, m.axis) for s in umap.spaces for m in s.members}
    assert len(covered) == sum(len(s.members) for s in umap.spaces)  # no axis twice
    for name, shape in shapes(model).items():
        for axis, size in enumerate(shape):
            if size in (32, 64) and not (name == "embeddings.patch_embeddings.projection.weight" and axis > 0):
                assert (name, axis) in covered or name in umap.task_heads, (name, axis)


def test_head_groups_pair_qk_with_vo():
    umap = unit_map_of(tiny_model("bert-seq"))
    groups = umap.head_groups()
    assert list(groups) == ["layer.0.attn", "layer.1.attn"]
    assert [s.name for s in groups["layer.0.attn"]] == ["layer.0.qk", "layer.0.vo"]
    assert groups["layer.0.attn"][0].heads == Heads(4, 8)


def test_sites_point_at_real_modules(kind):
    model = tiny_model(kind)
    modules = dict(model.named_modules())
    for space in unit_map_of(model).spaces:
        assert space.sites, space.name
        for site in space.sites:
            assert site.module in modules, (space.name, site.module)


def test_extra_unmapped_parameter_is_refused():
    model = tiny_model("vit-cls")
    model.vit.extra_adapter = torch.nn.Linear(32, 32)
    with pytest.raises(UnitMapError, match="'vit.extra_adapter.weight' is not covered"):
        unit_map_of(model)


def test_unsupported_architecture_names_the_supported_ones():
    class Config:
        model_type = "gpt2"

    with pytest.raises(UnitMapError, match="'gpt2' is not supported.*bert.*register_unit_map"):
        unit_map_for(Config(), {})


def test_heads_that_do_not_divide_are_refused():
    m = Member("w", 0, "out", 0)
    umap = UnitMap("toy", 1, [MergeSpace("qk", 32, (m,), (), 0, Heads(3, 10), "g")])
    with pytest.raises(UnitMapError, match="3 heads of 10 units do not divide its 32 units"):
        umap.validate({"w": (32, 4)})


def test_shape_mismatch_and_double_cover_are_refused():
    a = MergeSpace("a", 8, (Member("w", 0, "out", EMBEDDINGS),))
    with pytest.raises(UnitMapError, match="axis 0 of 'w' has 4 units but space 'a' has 8"):
        UnitMap("toy", 0, [a]).validate({"w": (4, 8)})
    b = MergeSpace("b", 8, (Member("w", 0, "in", EMBEDDINGS),))
    with pytest.raises(UnitMapError, match="belongs to more than one space"):
        UnitMap("toy", 0, [a, b]).validate({"w": (8, 8)})
    with pytest.raises(UnitMapError, match="does not have"):
        UnitMap("toy", 0, [a]).validate({})


def test_a_shared_parameter_that_only_reads_is_refused():
    """Without an 'out' member, apply would sum the parents' copies of the parameter."""
    a = MergeSpace("a", 8, (Member("w", 0, "out", EMBEDDINGS), Member("r", 1, "in", 0)))
    with pytest.raises(UnitMapError, match="parameter 'r' of the 'toy' unit map only reads merge spaces"):
        UnitMap("toy", 1, [a]).validate({"w": (8,), "r": (4, 8)})
    UnitMap("toy", 1, [a], task_heads=("r",)).validate({"w": (8,), "r": (4, 8)})  # a task head may only read


def test_registry_refuses_silent_overwrite_and_accepts_new_types():
    with pytest.raises(ValueError, match="already registered"):
        register_unit_map("vit", VIT)
    register_unit_map("my-vit", VIT)
    assert "my-vit" in supported_model_types()
    model = tiny_model("vit-cls")
    model.config.model_type = "my-vit"
    assert unit_map_of(model).family == "vit"

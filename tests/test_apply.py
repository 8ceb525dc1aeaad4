"""Exactness of transforms: permutations preserve the function; merging a model with a
permuted copy of itself, given the true transforms, returns the original (full and partial);
real zips (merged units of 1 to 6 members, several from one model, none from another) of three
copies of a model with duplicated FFN units return it too."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import TINY, outputs, tiny_inputs, tiny_model
from hf_mudsc.apply import apply_transforms, build_task_model
from hf_mudsc.transforms import SpaceTransform, Transforms, invert, random_permutation
from hf_mudsc.unitmaps import UnitMap, unit_map_of

HEADED = sorted(k for k in TINY if not k.endswith("-base"))


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def permuted_copy(model: torch.nn.Module, seed: int) -> tuple[torch.nn.Module, Transforms]:
    """A function-preserving permutation of ``model`` and the permutations used."""
    umap = unit_map_of(model)
    perm = random_permutation(umap, seed)
    weights = apply_transforms([umap], [params(model)], perm)
    return build_task_model(model, weights.task_state_dict(0)), perm


def true_transforms(umap: UnitMap, perm: Transforms, order_seed: int | None = None) -> Transforms:
    """Transforms that merge a model with its permuted copy back onto one frame.

    Permutation shape (``order_seed=None``): model 0 is the identity and model 1 is undone.
    Zip shape: the merged units come in a random (head-respecting) order ``sigma`` for both.
    """
    order = None if order_seed is None else random_permutation(umap, order_seed)
    out = {}
    for s in umap.spaces:
        back = invert(perm[s.name])  # unit p of the copy is unit back[p] of the original
        sigma = torch.arange(s.dim) if order is None else order[s.name].assign[0]
        out[s.name] = SpaceTransform((sigma, sigma[back]), s.dim)
    return out


def test_permutation_preserves_function(kind):
    model = tiny_model(kind)
    x = tiny_inputs(model)
    copy, perm = permuted_copy(model, seed=3)
    assert max((a - b).abs().max() for a, b in zip(params(model).values(), params(copy).values())) > 1e-2
    if kind.endswith("-base"):  # a base model's hidden states come out permuted: undo it
        with torch.no_grad():
            a = model(**x).last_hidden_state
            b = copy(**x).last_hidden_state
        torch.testing.assert_close(b[..., perm["residual"].assign[0]], a, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(outputs(copy, x), outputs(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", ["permute", "zip"])
def test_merge_with_permuted_copy_returns_original(kind, shape):
    model = tiny_model(kind)
    if shape == "zip" and kind.endswith("-base"):
        pytest.skip("the merged frame of a base model is permuted in zip shape; covered by the permute shape")
    x = tiny_inputs(model)
    copy, perm = permuted_copy(model, seed=5)
    umap = unit_map_of(model)
    transforms = true_transforms(umap, perm, None if shape == "permute" else 11)
    merged = apply_transforms([umap, unit_map_of(copy)], [params(model), params(copy)], transforms)
    for i in range(2):
        task = build_task_model(model, merged.task_state_dict(i))
        torch.testing.assert_close(outputs(task, x), outputs(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", HEADED)
@pytest.mark.parametrize("shape", ["permute", "zip"])
def test_partial_merges_at_every_depth(kind, shape):
    model = tiny_model(kind)
    x = tiny_inputs(model)
    copy, perm = permuted_copy(model, seed=7)
    umap = unit_map_of(model)
    transforms = true_transforms(umap, perm, None if shape == "permute" else 13)
    expected = outputs(model, x)
    for depth in range(umap.num_layers + 1):
        merged = apply_transforms([umap, umap], [params(model), params(copy)], transforms, merge_layers=depth)
        for i in range(2):
            task = build_task_model(model, merged.task_state_dict(i))
            torch.testing.assert_close(outputs(task, x), expected, atol=1e-5, rtol=0, msg=f"L={depth} task {i}")
        n_private = len(merged.private[0])
        assert n_private >= len(umap.task_heads)
        if depth < umap.num_layers:
            assert any(".layer" in n or "layers." in n for n in merged.private[0])


def test_merge_of_unrelated_models_is_the_average_under_identity():
    a, b = tiny_model("vit-cls", seed=0), tiny_model("vit-cls", seed=1)
    umap = unit_map_of(a)
    ident = {s.name: SpaceTransform.identity([s.dim, s.dim]) for s in umap.spaces}
    merged = apply_transforms([umap, umap], [params(a), params(b)], ident)
    name = "vit.layers.0.mlp.fc1.weight"
    torch.testing.assert_close(merged.shared[name], (params(a)[name] + params(b)[name]) / 2)
    # heads stay per task, untouched under identity
    torch.testing.assert_close(merged.private[1]["classifier.weight"], params(b)["classifier.weight"])


def test_same_model_zip_of_duplicated_units_is_exact():
    """Zip inside one model: an FFN whose units are duplicated (outputs halved) zips back exactly."""
    model = tiny_model("vit-cls")
    x = tiny_inputs(model)
    wide = tiny_model("vit-cls", intermediate_size=128)
    sd = params(model)
    wsd = {n: t.clone() for n, t in sd.items()}
    for i in range(2):
        up, down = f"vit.layers.{i}.mlp.fc1", f"vit.layers.{i}.mlp.fc2"
        wsd[f"{up}.weight"] = torch.cat([sd[f"{up}.weight"]] * 2)
        wsd[f"{up}.bias"] = torch.cat([sd[f"{up}.bias"]] * 2)
        wsd[f"{down}.weight"] = torch.cat([sd[f"{down}.weight"] / 2] * 2, dim=1)
    wide.load_state_dict(wsd, strict=False)
    torch.testing.assert_close(outputs(wide, x), outputs(model, x), atol=1e-5, rtol=0)
    umap = unit_map_of(wide)
    t = {s.name: SpaceTransform((torch.arange(s.dim),), s.dim) for s in umap.spaces}
    for i in range(2):
        t[f"layer.{i}.ffn"] = SpaceTransform((torch.arange(128) % 64,), 64)
    merged = apply_transforms([umap], [wsd], t)
    back = build_task_model(model, merged.task_state_dict(0))
    torch.testing.assert_close(outputs(back, x), outputs(model, x), atol=1e-5, rtol=0)


def test_transform_matrices_agree_with_index_ops():
    t = SpaceTransform((torch.tensor([2, 0, 1, 0]), torch.tensor([1, 2, 0])), 3)
    x = torch.randn(4, 5, dtype=torch.float64)
    m, u = t.matrices(0)
    torch.testing.assert_close(t.merge(x, 0, 0), m @ x)
    torch.testing.assert_close(t.unmerge(x.T, 0, 1), x.T @ u)
    torch.testing.assert_close(t.project(x, 0, 0), torch.linalg.pinv(u) @ x)
    assert not t.is_permutation()
    assert SpaceTransform((torch.tensor([1, 0]), torch.tensor([0, 1])), 2).is_permutation()


def test_transforms_file_round_trips_byte_for_byte(tmp_path):
    from hf_mudsc.transforms import load_transforms, save_transforms

    umap = unit_map_of(tiny_model("bert-seq"))
    t = random_permutation(umap, 3)
    save_transforms(t, str(tmp_path / "a.safetensors"))
    back = load_transforms(str(tmp_path / "a.safetensors"))
    assert back.keys() == t.keys() and all(torch.equal(back[n].assign[0], t[n].assign[0]) for n in t)
    save_transforms(back, str(tmp_path / "b.safetensors"))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def with_duplicated_ffn_units(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose FFN units ``j`` and ``j + d/2`` compute the same activation in every
    layer (the writers' rows copied; the readers' columns left as they are, so both units count)."""
    sd = {n: t.clone() for n, t in params(model).items()}
    for space in unit_map_of(model).spaces:
        if space.name.endswith(".ffn"):
            half = space.dim // 2
            for member in space.writers:
                t = sd[member.param]
                t.narrow(member.axis, half, half).copy_(t.narrow(member.axis, 0, half))
    twin = copy.deepcopy(model)
    twin.load_state_dict(sd, strict=False)
    return twin


def zip_of_copies(umap: UnitMap, perms: list[Transforms], seed: int) -> Transforms:
    """Transforms merging permuted copies (model i is the original permuted by ``perms[i]``) of a
    model from :func:`with_duplicated_ffn_units`. Every space but the FFNs is undone onto the
    original's frame. Each FFN is a real zip: the ``2 * len(perms)`` units that compute one
    activation (two per model) are split at random into 1, 2 or 3 merged units (2 on average, so
    that ``k`` is the parents' width)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in umap.spaces:
        backs = [invert(p[s.name]) for p in perms]  # unit u of model i is the original's unit backs[i][u]
        if not s.name.endswith(".ffn"):
            out[s.name] = SpaceTransform(tuple(backs), s.dim)
            continue
        half = s.dim // 2
        parts = torch.tensor([1, 3] * (half // 2) + [2] * (half % 2))[torch.randperm(half, generator=g)]
        first = torch.cumsum(parts, 0) - parts  # the first merged unit of each activation
        assign = [torch.empty_like(b) for b in backs]
        for f in range(half):
            copies = [(i, int(u)) for i, b in enumerate(backs) for u in torch.nonzero(b % half == f).flatten()]
            cuts = torch.randperm(len(copies) - 1, generator=g)[:int(parts[f]) - 1] + 1
            for rank, c in enumerate(torch.randperm(len(copies), generator=g).tolist()):
                i, u = copies[c]
                assign[i][u] = first[f] + int((cuts <= rank).sum())
        out[s.name] = SpaceTransform(tuple(assign), s.dim)
    return out


def three_copies(kind: str) -> tuple[torch.nn.Module, list[torch.nn.Module], Transforms]:
    """A model with duplicated FFN units, three parents (it and two permuted copies), and their zip."""
    model = with_duplicated_ffn_units(tiny_model(kind))
    umap = unit_map_of(model)
    copies = [permuted_copy(model, seed) for seed in (21, 22)]
    perms = [{s.name: SpaceTransform((torch.arange(s.dim),), s.dim) for s in umap.spaces}] + [p for _, p in copies]
    return model, [model] + [c for c, _ in copies], zip_of_copies(umap, perms, seed=len(kind))


def test_zip_of_copies_has_every_merged_unit_shape():
    """The zips below are not permutations: merged units of 1, 2, 3 and more members, two members
    of one model, and merged units without any member of some model."""
    _, _, transforms = three_copies("vit-cls")
    for name, t in transforms.items():
        if not name.endswith(".ffn"):
            assert t.is_permutation()
            continue
        per_model = torch.stack([t.model_counts(i) for i in range(3)])
        assert {1, 2, 3} <= set(t.counts().tolist()) and t.counts().max() >= 4, name
        assert (per_model >= 2).any() and (per_model == 0).any(), name


@pytest.mark.parametrize("merge_layers", [None, 1])
def test_real_zip_of_three_parents_is_exact(kind, merge_layers):
    if merge_layers is not None and kind.endswith("-base"):
        pytest.skip("a base model's unmerged pooler writes in its parent's frame; covered by the full merge")
    model, parents, transforms = three_copies(kind)
    x = tiny_inputs(model)
    expected = outputs(model, x)
    umaps = [unit_map_of(p) for p in parents]
    merged = apply_transforms(umaps, [params(p) for p in parents], transforms, merge_layers)
    for i, parent in enumerate(parents):
        task = build_task_model(parent, merged.task_state_dict(i))
        torch.testing.assert_close(outputs(task, x), expected, atol=1e-5, rtol=0, msg=f"task {i}")


@pytest.mark.parametrize("kind", ["bert-seq", "vit-cls"])
def test_merger_applies_given_zip_transforms_exactly(kind):
    from hf_mudsc import MuDSCMerger

    model, parents, transforms = three_copies(kind)
    x = tiny_inputs(model)
    result = MuDSCMerger.from_pretrained(parents, "zipit").apply(transforms)
    expected = outputs(model, x)
    for i, task in enumerate(result.task_models):
        torch.testing.assert_close(outputs(task, x), expected, atol=1e-5, rtol=0, msg=f"task {i}")
    with torch.no_grad():
        joint = result.model(**x).logits
    torch.testing.assert_close(joint, torch.log_softmax(expected, -1).repeat(1, 3), atol=1e-5, rtol=0)

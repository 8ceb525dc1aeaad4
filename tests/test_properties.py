"""Property tests on random configurations (hypothesis; small example counts, the file runs in well
under a minute):

- unit maps of random BERT / RoBERTa / ViT / DeiT encoders validate, cover every parameter, put each
  (parameter, axis) in at most one space, and refuse an extra parameter or a changed shape by name;
- a random function-preserving permutation leaves the outputs equal (float64);
- every solver gives a valid solution on random similarities (assignments in range, every merged unit
  used, k exact, head boundaries kept), and merging identical parents is the identity;
- the command line, fed wrong types and out-of-range values with missing parents, exits 2 with one line
  and writes nothing; fed random recipe values with real parents, it either refuses in one line and
  writes nothing, or exits 0 with a merge folder whose recipe holds exactly the values given.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hf_mudsc.apply import apply_transforms, build_task_model
from hf_mudsc.cli import main
from hf_mudsc.solve import Solution, solve_heads, solve_permute, solve_zip
from hf_mudsc.transforms import random_permutation
from hf_mudsc.unitmaps import UnitMapError, unit_map_for, unit_map_of

# ------------------------------------------------------------------------------ random encoders
CONFIGS = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "vit": tf.ViTConfig, "deit": tf.DeiTConfig,
           "distilbert": tf.DistilBertConfig, "electra": tf.ElectraConfig}
CLASSES = {
    "bert": ["BertModel", "BertForSequenceClassification", "BertForTokenClassification",
             "BertForQuestionAnswering", "BertForMultipleChoice"],
    "roberta": ["RobertaModel", "RobertaForSequenceClassification", "RobertaForTokenClassification",
                "RobertaForQuestionAnswering", "RobertaForMultipleChoice"],
    "vit": ["ViTModel", "ViTForImageClassification"],
    "deit": ["DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"],
    "distilbert": ["DistilBertModel", "DistilBertForSequenceClassification", "DistilBertForTokenClassification",
                   "DistilBertForQuestionAnswering", "DistilBertForMultipleChoice"],
    "electra": ["ElectraModel", "ElectraForSequenceClassification", "ElectraForTokenClassification",
                "ElectraForQuestionAnswering"],
}
POOLED = ("bert", "roberta", "vit", "deit")  # base models with an optional pooler
VISION = ("vit", "deit")
SEQ_LEN = 7


@dataclass(frozen=True)
class Encoder:
    family: str
    cls: str
    layers: int
    heads: int
    head_dim: int
    ffn: int
    labels: int
    pooler: bool  # base models only (heads decide for themselves)
    channels: int
    seed: int

    def build(self) -> torch.nn.Module:
        labels = 2 if self.cls.endswith("QuestionAnswering") else self.labels  # start and end logits
        kw = dict(hidden_size=self.heads * self.head_dim, num_hidden_layers=self.layers,
                  num_attention_heads=self.heads, intermediate_size=self.ffn, num_labels=labels,
                  initializer_range=0.3)
        if self.family in VISION:
            kw.update(image_size=8, patch_size=4, num_channels=self.channels)
        else:
            kw.update(vocab_size=30, max_position_embeddings=SEQ_LEN + 4, type_vocab_size=2)
        if self.family == "distilbert":
            kw["hidden_dim"] = kw.pop("intermediate_size")
        if self.family == "electra" and self.seed % 2:  # embeddings narrower than the layers, projected
            kw["embedding_size"] = max(1, kw["hidden_size"] // 2)
        config = CONFIGS[self.family](**kw)
        torch.manual_seed(self.seed)
        cls = getattr(tf, self.cls)
        pooled = self.cls.endswith("Model") and self.family in POOLED
        model = cls(config, add_pooling_layer=self.pooler) if pooled else cls(config)
        model = model.to(torch.float64).eval()
        with torch.no_grad():  # non-trivial norms and biases, so a wrong transform shows
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
        return model


@st.composite
def encoders(draw) -> Encoder:
    family = draw(st.sampled_from(sorted(CONFIGS)))
    return Encoder(family, draw(st.sampled_from(CLASSES[family])), draw(st.integers(1, 3)), draw(st.integers(1, 4)),
                   draw(st.integers(2, 8)), draw(st.integers(1, 24)), draw(st.integers(1, 4)), draw(st.booleans()),
                   draw(st.integers(1, 3)), draw(st.integers(0, 2**16)))


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def inputs(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    config = model.config
    if model.main_input_name == "pixel_values":
        return {"pixel_values": torch.randn(3, config.num_channels, 8, 8, generator=g, dtype=torch.float64)}
    ids = torch.randint(3, config.vocab_size, (3, SEQ_LEN), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # padding
    ids = ids.masked_fill(mask == 0, config.pad_token_id or 0)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    if type(model).__name__.endswith("MultipleChoice"):
        batch = {k: torch.stack([v, v.flip(0)], dim=1) for k, v in batch.items()}
    return batch


PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(spec=encoders())
def test_unit_map_of_a_random_encoder_validates_and_covers_every_parameter(spec: Encoder) -> None:
    model = spec.build()
    umap = unit_map_of(model)  # validated against the model's shapes
    pairs = [(m.param, m.axis) for s in umap.spaces for m in s.members]
    assert len(pairs) == len(set(pairs)), "a (parameter, axis) in two spaces"
    covered = {p for p, _ in pairs}
    assert set(shapes(model)) <= covered | set(umap.task_heads)
    assert set(umap.task_heads) <= set(shapes(model))
    assert all(s.sites for s in umap.spaces)
    for qk, vo in umap.head_groups().values():
        assert qk.heads == vo.heads and qk.heads.num_heads == spec.heads and qk.heads.head_dim == spec.head_dim
    names = umap.space_names
    assert names[0] == "residual" and len([n for n in names if n.startswith("layer.")]) == 3 * spec.layers
    has_pooler = any(n.endswith("pooler.dense.weight") for n in shapes(model))
    assert ("pooler" in names) == has_pooler


@PROPERTY
@given(spec=encoders(), data=st.data())
def test_an_extra_parameter_or_a_changed_shape_is_refused_by_name(spec: Encoder, data) -> None:
    model = spec.build()
    config, sizes = model.config, shapes(model)
    modules = [n for n, _ in model.named_modules() if n]
    extra = f"{data.draw(st.sampled_from(modules))}.extra_{data.draw(st.sampled_from(['weight', 'bias', 'scale']))}"
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    with pytest.raises(UnitMapError, match=f"'{extra}' is not covered"):
        unit_map_for(config, {**sizes, extra: shape})
    members = sorted({(m.param, m.axis) for s in unit_map_of(model).spaces for m in s.members})
    param, axis = data.draw(st.sampled_from(members))
    changed = list(sizes[param])
    changed[axis] += data.draw(st.integers(1, 3))
    with pytest.raises(UnitMapError, match=f"'{param}'"):
        unit_map_for(config, {**sizes, param: tuple(changed)})


def compared_outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor], perm=None) -> list[torch.Tensor]:
    """What must not change under a permutation: logits (start/end logits for QA); for a base
    model its hidden states and pooled output, brought back to the original unit order."""
    with torch.no_grad():
        out = model(**batch)
    if getattr(out, "logits", None) is not None:
        return [out.logits]
    if getattr(out, "start_logits", None) is not None:
        return [out.start_logits, out.end_logits]
    found = [out.last_hidden_state if perm is None else out.last_hidden_state[..., perm["residual"].assign[0]]]
    if getattr(out, "pooler_output", None) is not None:
        found.append(out.pooler_output if perm is None else out.pooler_output[..., perm["pooler"].assign[0]])
    return found


@PROPERTY
@given(spec=encoders(), seed=st.integers(0, 2**16))
def test_a_random_permutation_preserves_the_function(spec: Encoder, seed: int) -> None:
    model = spec.build()
    umap = unit_map_of(model)
    perm = random_permutation(umap, seed)
    weights = apply_transforms([umap], [{n: p.detach() for n, p in model.named_parameters()}], perm)
    copy = build_task_model(model, weights.task_state_dict(0))
    batch = inputs(model, seed)
    for want, got in zip(compared_outputs(model, batch), compared_outputs(copy, batch, perm)):
        torch.testing.assert_close(got, want, atol=1e-8, rtol=0)


# ------------------------------------------------------------------------------ solvers
def check_solution(sol: Solution, sizes: list[int], k: int, *, one_to_one: bool = False) -> None:
    """Assignments in range, every merged unit used, k exact; a permutation per model if asked."""
    assert sol.k == k and [len(a) for a in sol.assign] == sizes
    labels = sol.labels()
    assert labels.min() >= 0 and labels.max() < k and len(np.unique(labels)) == k
    if one_to_one:
        assert all(len(np.unique(a)) == len(a) for a in sol.assign)
    assert np.isfinite(sol.objective)


def check_heads(sol: Solution, heads: list[int], head_dim: int) -> None:
    """Every head of a model lands whole in one merged head; two heads of a model in two."""
    for a, count in zip(sol.assign, heads):
        merged = (a // head_dim).reshape(count, head_dim)
        assert (merged == merged[:, :1]).all()
        assert len(np.unique(merged[:, 0])) == count


@st.composite
def similarities(draw, n: int) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "zeros", "correlation"]))
    if kind == "zeros":  # no information at all (e.g. every unit constant)
        return np.zeros((n, n))
    if kind == "correlation":
        return np.corrcoef(rng.normal(size=(n, n + 3)))
    sim = rng.normal(size=(n, n))
    return np.round(sim, 0) if kind == "ties" else sim


BUDGETS = st.sampled_from([0.0, 0.1, 0.34, 0.5, 1.0])
DECAYS = st.sampled_from([0.0, 0.3, 0.7, 1.0])
SOLVER = settings(max_examples=60, deadline=None)


@SOLVER
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=4), data=st.data())
def test_permute_gives_one_to_one_assignments(sizes: list[int], data) -> None:
    sim = data.draw(similarities(sum(sizes)))
    check_solution(solve_permute(sim, sizes), sizes, max(sizes), one_to_one=True)


@SOLVER
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=4), budget=BUDGETS, decay=DECAYS,
       k_frac=st.none() | st.floats(0.0, 1.0), data=st.data())
def test_zip_gives_exactly_k_merged_units(sizes: list[int], budget: float, decay: float, k_frac, data) -> None:
    sim = data.draw(similarities(sum(sizes)))
    k = max(sizes) if k_frac is None else max(1, round(k_frac * sum(sizes)))
    check_solution(solve_zip(sim, sizes, None if k_frac is None else k, budget, decay), sizes, k)


@SOLVER
@given(heads=st.lists(st.integers(1, 4), min_size=2, max_size=4), head_dim=st.integers(1, 4),
       mode=st.sampled_from(["permute", "zip"]), spaces=st.integers(1, 2), budget=BUDGETS, decay=DECAYS,
       data=st.data())
def test_heads_keep_head_boundaries_in_every_space(heads: list[int], head_dim: int, mode: str, spaces: int,
                                                   budget: float, decay: float, data) -> None:
    sizes = [h * head_dim for h in heads]
    sims = [data.draw(similarities(sum(sizes))) for _ in range(spaces)]
    sols = solve_heads(sims, sizes, heads, head_dim, mode, budget, decay)
    assert len(sols) == spaces
    for sol in sols:
        check_solution(sol, sizes, max(sizes), one_to_one=mode == "permute")
        check_heads(sol, heads, head_dim)
    merged_heads = [[a // head_dim for a in sol.assign] for sol in sols]
    for other in merged_heads[1:]:  # one head assignment shared by the spaces of a head group
        assert all(np.array_equal(x, y) for x, y in zip(other, merged_heads[0]))


def identical(models: int, units: int, seed: int) -> np.ndarray:
    """The correlation of ``models`` identical parents with ``units`` units each, exact by
    construction (every cross-model block is the within-model block, bit for bit)."""
    x = np.random.default_rng(seed).normal(size=(units, 3 * units + 5))
    return np.tile(np.corrcoef(x), (models, models))


@SOLVER
@given(models=st.integers(2, 4), heads=st.integers(1, 4), head_dim=st.integers(1, 4), budget=BUDGETS,
       decay=DECAYS, seed=st.integers(0, 2**32 - 1))
def test_merging_identical_parents_is_the_identity(models: int, heads: int, head_dim: int, budget: float,
                                                   decay: float, seed: int) -> None:
    """Permute and zip, any number of parents, budget and decay: the copies of a unit complete one
    cluster (with three parents or more, a pair of copies was decayed, and frozen at decay 0, so that
    the third copy could pair with another unit's leftover or lose to a same-model pair)."""
    d = heads * head_dim
    sim = identical(models, d, seed)
    sizes = [d] * models
    solutions = [solve_permute(sim, sizes), solve_zip(sim, sizes, budget=budget, decay=decay),
                 *solve_heads([sim, sim], sizes, heads, head_dim, "permute"),
                 *solve_heads([sim], sizes, heads, head_dim, "zip", budget, decay)]
    for sol in solutions:
        assert all(np.array_equal(a, np.arange(d)) for a in sol.assign)


# ------------------------------------------------------------------------------ command line
OPTIONS = ["--method", "--mode", "--alpha", "--merge-layers", "--zip-budget", "--zip-decay", "--max-sweeps",
           "--patience", "--max-tokens-per-batch", "--seed", "--dataset", "--split", "--column", "--num-samples",
           "--batch-size", "--device-map", "--torch-dtype", "--revision", "--max-shard-size", "--push-to-hub",
           "--token", "--out", "--config"]
FLAGS = ["--overwrite", "--allow-pickle", "--trust-remote-code", "--private"]
VALUES = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "nan", "-inf", "1e999", "0x10", "true", "None", "[1, 2]", "{a: 1}", "-", "--", "5GB",
                     "zip", "permute", "mudsc", "average", "auto", "float16"]),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12),
)
YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
YAML_KEYS = ["models", "method", "mode", "alpha", "merge_layers", "zip_budget", "seed", "num_samples", "out",
             "max_shard_size", "overwrite", "allow_pickle", "dataset", "column", "unknown_key"]


@contextlib.contextmanager
def sandbox():
    """A fresh working directory; stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield Path(tmp), out, err
        finally:
            os.chdir(here)


def check_refused(code: int, stderr: str, folder: Path, before: set[str]) -> None:
    """Exit 2, one line, nothing written (no valid merge exists with parents that are missing)."""
    assert code == 2, (code, stderr)
    assert stderr.count("\n") == 1 and stderr.startswith("hf-mudsc: error: "), stderr
    assert {p.name for p in folder.iterdir()} == before


@settings(max_examples=50, deadline=None)
@given(options=st.lists(st.tuples(st.sampled_from(OPTIONS), VALUES), max_size=4),
       flags=st.lists(st.sampled_from(FLAGS), max_size=2), models=st.integers(0, 3),
       dangling=st.none() | st.sampled_from(OPTIONS))
def test_command_line_fuzz_with_missing_parents_exits_2_with_one_line(options, flags, models, dangling) -> None:
    """Parents that do not exist: only validation runs (no model is loaded, nothing is written)."""
    with sandbox() as (folder, _, err):
        argv = ["merge", *[str(folder / f"missing{i}") for i in range(models)]]
        for name, value in options:
            argv += [f"{name}={value}"]  # '=' keeps values such as '-5' or '--' with their option
        argv += flags + ([dangling] if dangling else [])
        code = main(argv)
        check_refused(code, err.getvalue(), folder, set())


@settings(max_examples=40, deadline=None)
@given(recipe=st.dictionaries(st.sampled_from(YAML_KEYS), YAML_VALUES, max_size=5), use_models=st.booleans())
def test_yaml_recipe_fuzz_exits_2_with_one_line(recipe, use_models) -> None:
    with sandbox() as (folder, _, err):
        if use_models:
            recipe["models"] = [str(folder / "missing0"), str(folder / "missing1")]
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        code = main(["merge", "--config", str(folder / "recipe.yaml")])
        check_refused(code, err.getvalue(), folder, {"recipe.yaml"})


@functools.lru_cache(maxsize=1)
def real_parents() -> tuple[str, str]:
    """Two tiny BERT parents on disk (made once per session; weight matching needs no data)."""
    from parents_on_disk import bert_parents

    return tuple(str(p) for p in bert_parents(Path(tempfile.mkdtemp(prefix="fuzz-parents-"))))


CONFIG_VALUES = {
    "method": st.sampled_from(["weight-matching", "average", "zipit", "mudsc", "bogus"]),
    "mode": st.sampled_from(["zip", "permute", "auto"]),
    "alpha": st.sampled_from(["1", "1.0", "0.5", "2", "x"]),
    "merge_layers": st.sampled_from(["0", "1", "2", "3", "-1", "1.5"]),
    "zip_budget": st.sampled_from(["0", "0.5", "1.5"]),
    "zip_decay": st.sampled_from(["0", "0.5", "nan"]),
    "max_sweeps": st.sampled_from(["1", "0"]),
    "seed": st.sampled_from(["0", "7", "-1", "18446744073709551616"]),
    "residual_layers": st.sampled_from(["0,2", "0,9", "x"]),
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=st.dictionaries(st.sampled_from(sorted(CONFIG_VALUES)), st.none(), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: CONFIG_VALUES[k] for k in keys})))
@example(options={"method": "weight-matching", "residual_layers": "0,2", "seed": "7"})  # both outcomes run
@example(options={"method": "average", "merge_layers": "1"})
@example(options={"method": "weight-matching", "merge_layers": "-1"})
def test_command_line_fuzz_with_real_parents_merges_exactly_what_it_was_given(options) -> None:
    """Data-free runs (no --dataset): a method that needs data is refused, like any bad value."""
    from hf_mudsc.cli import config_options
    from hf_mudsc.config import MergeConfig

    parents = real_parents()
    with sandbox() as (folder, out, err):
        argv = ["merge", *parents, "--out", str(folder / "merged")]
        for name, value in options.items():
            argv.append(f"--{name.replace('_', '-')}={value}")
        code = main(argv)
        if code != 0:
            check_refused(code, err.getvalue(), folder, set())
            return
        assert out.getvalue().startswith("merged 2 models with ")
        expected = MergeConfig(**{k: config_options()[k].from_text(v) for k, v in options.items()}).to_dict()
        saved = json.loads((folder / "merged" / "merge_recipe.json").read_text())
        assert saved["config"] == json.loads(json.dumps(expected))
        assert saved["calibration"] is None  # data-free
        for sub in ("tasks/0", "tasks/1", "."):
            assert (folder / "merged" / sub / "config.json").is_file()

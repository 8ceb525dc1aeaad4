"""The model card: metadata round trip, body, citations, no secrets."""
from __future__ import annotations

import inspect
from typing import Any

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_mudsc.io.card import build_model_card, cited_papers, markdown_table, scrub_secrets

FAKE_TOKEN = "hf_" + "A1b2C3d4" * 5


def _card(**overrides: Any) -> ModelCard:
    kwargs: dict[str, Any] = dict(
        base_models=["org/vit-a", "org/vit-b"],
        method="mudsc",
        method_title="MuDSC",
        recipe={"method": "mudsc", "mode": "zip", "alpha": 0.5, "max_tokens_per_batch": 256, "hf_token": FAKE_TOKEN},
        pipeline_tag="image-classification",
        datasets=["fashion_mnist"],
        calibration={"name": "fashion_mnist", "split": "train", "num_samples": 512, "num_patches": 25600},
        diagnostics=[
            {"space": "residual", "units": 192, "objective": 0.612345, "act_sim": 0.58, "weight_sim": 0.21},
            {"space": "layer.0.ffn", "units": 768, "objective": 0.4, "act_sim": 0.39, "weight_sim": 0.1},
        ],
        evaluation=[{"model": "merged", "joint_acc": 0.71, "per_task_acc": 0.8}],
        notes=["post-LN layers without partner carried from the deep model"],
        license="apache-2.0",
    )
    kwargs.update(overrides)
    return build_model_card(**kwargs)


def _body(card: ModelCard) -> str:
    return card.text.strip()


def test_metadata_round_trips() -> None:
    data = ModelCard(str(_card())).data
    assert data.base_model == ["org/vit-a", "org/vit-b"]
    assert data.base_model_relation == "merge"
    assert {"merge", "mudsc", "hf-mudsc"} <= set(data.tags)
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification"
    assert data.datasets == ["fashion_mnist"]
    assert data.license == "apache-2.0"


def test_optional_metadata_is_left_out() -> None:
    card = _card(datasets=None, pipeline_tag=None, license=None, method="weight-matching", calibration=None)
    metadata = yaml.safe_load(str(card).split("---")[1])
    assert not {"datasets", "pipeline_tag", "license"} & metadata.keys()
    assert "weight-matching" in metadata["tags"]
    assert "data-free" in _body(card)


def test_body_sections() -> None:
    body = _body(_card())
    assert body.startswith("# MuDSC merge of 2 models")
    for text in ("`org/vit-a` -> `tasks/0/`", "`org/vit-b` -> `tasks/1/`", "**num_samples**: 512", "25600"):
        assert text in body
    assert "```yaml\nmethod: mudsc\nmode: zip\nalpha: 0.5\nmax_tokens_per_batch: 256\n```" in body
    assert "| space | units | objective | act_sim | weight_sim |" in body
    assert "| residual | 192 | 0.6123 | 0.58 | 0.21 |" in body
    assert "| merged | 0.71 | 0.8 |" in body
    assert "- post-LN layers without partner carried from the deep model" in body
    assert 'pipeline("image-classification", model=f"{path}/tasks/0")' in body
    assert "import hf_mudsc" in body and "AutoModel.from_pretrained" in body


def test_no_evaluation_section_without_results() -> None:
    assert "## Evaluation" not in _body(_card(evaluation=None))


def test_usage_uses_given_id_and_task() -> None:
    body = _body(_card(model_id="me/merged", task_name="zero-shot-image-classification"))
    assert 'snapshot_download("me/merged")' in body
    assert 'pipeline("zero-shot-image-classification"' in body


@pytest.mark.parametrize(
    ("method", "mode", "hetero", "expected"),
    [
        ("mudsc", "zip", False, ["2403.01753", "2305.03053"]),
        ("mudsc", "permute", False, ["2403.01753"]),
        ("zipit", "zip", False, ["2305.03053"]),
        ("weight-matching", "permute", False, ["2209.04836"]),
        ("activation-matching", "permute", False, ["2209.04836"]),
        ("average", None, False, []),
        ("mudsc", "zip", True, ["2403.01753", "2305.03053", "2501.00061"]),
    ],
)
def test_citations_follow_the_method(method: str, mode: str | None, hetero: bool, expected: list[str]) -> None:
    papers = cited_papers(method, mode, hetero)
    assert [next(a for a in expected if a in p.reference) for p in papers] == expected
    body = _body(_card(method=method, recipe={"mode": mode}, heterogeneous=hetero))
    all_ids = ["2403.01753", "2305.03053", "2209.04836", "2501.00061"]
    assert [a for a in all_ids if a in body] == [a for a in all_ids if a in expected]
    assert ("```bibtex" in body) == bool(expected)


def test_token_never_in_card() -> None:
    assert "token" not in inspect.signature(build_model_card).parameters
    recipe = {"token": FAKE_TOKEN, "nested": {"apiKey": "k", "password": "p", "note": f"used {FAKE_TOKEN}"}}
    text = str(_card(recipe=recipe, calibration={"name": "x", "hf_token": FAKE_TOKEN}))
    assert FAKE_TOKEN not in text
    assert "apiKey" not in text and "password" not in text


def test_scrub_secrets_keeps_ordinary_keys() -> None:
    recipe = {
        "max_tokens_per_batch": 1,
        "tokenizer": "bert",
        "use_auth_token": True,
        "HF_TOKEN": "x",
        "clientSecret": "y",
        "items": [{"access_token": "z", "alpha": 1.0}],
    }
    assert scrub_secrets(recipe) == {"max_tokens_per_batch": 1, "tokenizer": "bert", "items": [{"alpha": 1.0}]}


def test_markdown_table_union_of_columns_and_escaping() -> None:
    table = markdown_table([{"a": 1, "b": "x|y"}, {"c": None, "a": 2.0}])
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1 | x\\|y |  |", "| 2 |  |  |"]


def _what_was_merged(card: ModelCard) -> str:
    return _body(card).split("## What was merged")[1].split("## ")[0]


def test_each_card_says_what_its_folder_holds() -> None:
    joint = _what_was_merged(_card())
    assert "joint multi-task model (shared trunk, one head per parent)" in joint
    partial = _what_was_merged(_card(merge_layers=1, num_layers=2))
    assert "with its embeddings and first 1 of 2 layers merged" in partial
    assert "(embeddings and first 1 of 2 layers shared; later layers and one head per parent)" in partial
    assert "merged model itself" in _what_was_merged(_card(top="standard"))
    assert "holds no model" in _what_was_merged(_card(top="none", merge_layers=1, num_layers=2))
    task = _card(base_models=["org/vit-a"], top="task", task_folders=["."], model_id="me/merged", evaluation=None)
    assert "This folder holds the model of `org/vit-a`" in _what_was_merged(task)
    assert "joint" not in _body(task) and "folder root" not in _body(task)
    assert 'pipeline("image-classification", model="me/merged")' in _body(task)
    with pytest.raises(ValueError, match="top must be one of"):
        _card(top="everything")


def test_local_parents_are_named_by_their_folders(tmp_path) -> None:
    """Through the writer: no absolute path in any card, and no local folder in base_model metadata; a
    config's recorded ``_name_or_path`` (older transformers wrote the model a fine-tune started from:
    two fine-tunes of one model were both named after it) is not the parent's name."""
    import json

    from hf_mudsc import MuDSCMerger
    from parents_on_disk import bert_parents

    a, b = bert_parents(tmp_path / "parents")
    config = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**config, "_name_or_path": "org/bert-b"}))  # older transformers
    result = MuDSCMerger.from_pretrained([str(a), str(b)], "weight-matching", merge_layers=1).merge(progress=False)
    out = result.save_pretrained(tmp_path / "merged")
    cards = [out / "README.md", out / "tasks" / "0" / "README.md", out / "tasks" / "1" / "README.md"]
    for path in cards:
        text = path.read_text()
        assert str(tmp_path) not in text, path
        assert ModelCard(text).data.base_model is None  # local parents are no Hub base models
    top = cards[0].read_text()
    assert f"- `{a.name}` -> `tasks/0/`" in top and f"- `{b.name}` -> `tasks/1/`" in top and "org/bert-b" not in top
    assert "embeddings and first 1 of 2 layers shared" in top
    assert f"This folder holds the model of `{b.name}`" in cards[2].read_text()

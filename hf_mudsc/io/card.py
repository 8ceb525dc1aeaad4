"""The model card (README.md) of a merged model: Hub metadata, method, recipe, diagnostics.

The card never carries credentials: :func:`build_model_card` takes no token, and recipe
entries whose key names a token, password or secret (or whose value looks like a Hugging Face
token) are dropped before the recipe is written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import yaml
from huggingface_hub import ModelCard, ModelCardData

from ..paths import could_be_hub_id


@dataclass(frozen=True)
class Paper:
    """A paper the card cites: a one-line reference and its BibTeX entry."""

    reference: str
    bibtex: str


MUDSC = Paper(
    "Xu, Yuan, Wang, Wang, Song, Song. *Training-Free Pretrained Model Merging*. CVPR 2024."
    " [arXiv:2403.01753](https://arxiv.org/abs/2403.01753)",
    """@inproceedings{xu2024mudsc,
  title     = {Training-Free Pretrained Model Merging},
  author    = {Xu, Zhengqi and Yuan, Ke and Wang, Huiqiong and Wang, Yong and Song, Mingli and Song, Jie},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024},
  eprint    = {2403.01753},
  archivePrefix = {arXiv}
}""",
)
HETEROGENEOUS = Paper(
    "Xu, Zheng, Song, Sun, Song. *Training-free Heterogeneous Model Merging*. 2025."
    " [arXiv:2501.00061](https://arxiv.org/abs/2501.00061)",
    """@article{xu2025heterogeneous,
  title   = {Training-free Heterogeneous Model Merging},
  author  = {Xu, Zhengqi and Zheng, Han and Song, Jie and Sun, Li and Song, Mingli},
  journal = {arXiv preprint arXiv:2501.00061},
  year    = {2025}
}""",
)
ZIPIT = Paper(
    "Stoica, Bolya, Bjorner, Ramesh, Hearn, Hoffman. *ZipIt! Merging Models from Different Tasks without"
    " Training*. ICLR 2024. [arXiv:2305.03053](https://arxiv.org/abs/2305.03053)",
    """@inproceedings{stoica2024zipit,
  title     = {ZipIt! Merging Models from Different Tasks without Training},
  author    = {Stoica, George and Bolya, Daniel and Bjorner, Jakob and Ramesh, Pratik and Hearn, Taylor and Hoffman, Judy},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024},
  eprint    = {2305.03053},
  archivePrefix = {arXiv}
}""",
)
GIT_REBASIN = Paper(
    "Ainsworth, Hayase, Srinivasa. *Git Re-Basin: Merging Models modulo Permutation Symmetries*. ICLR 2023."
    " [arXiv:2209.04836](https://arxiv.org/abs/2209.04836)",
    """@inproceedings{ainsworth2023gitrebasin,
  title     = {Git Re-Basin: Merging Models modulo Permutation Symmetries},
  author    = {Ainsworth, Samuel K. and Hayase, Jonathan and Srinivasa, Siddhartha},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023},
  eprint    = {2209.04836},
  archivePrefix = {arXiv}
}""",
)

_SENSITIVE_KEY = re.compile(r"(^|_)(token|password|passwd|secret|secrets|credentials?|auth|api_?key|private_?key)(_|$)")
_HF_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
REDACTED = "<redacted>"


def cited_papers(method: str, mode: str | None = None, heterogeneous: bool = False) -> list[Paper]:
    """The papers behind a method preset (``mode``: 'zip' or 'permute'; ``heterogeneous``: depth/width differ)."""
    papers = {
        "mudsc": [MUDSC, ZIPIT] if mode == "zip" else [MUDSC],
        "zipit": [ZIPIT],
        "weight-matching": [GIT_REBASIN],
        "activation-matching": [GIT_REBASIN],
    }.get(method, [])
    return papers + [HETEROGENEOUS] if heterogeneous else papers


def _key_words(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower())


def scrub_secrets(value: Any) -> Any:
    """Copy of ``value`` without mapping keys that name credentials and with token-like strings redacted."""
    if isinstance(value, Mapping):
        return {k: scrub_secrets(v) for k, v in value.items() if not _SENSITIVE_KEY.search(_key_words(str(k)))}
    if isinstance(value, (list, tuple)):
        return [scrub_secrets(v) for v in value]
    if isinstance(value, str):
        return _HF_TOKEN_VALUE.sub(REDACTED, value)
    return value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table whose columns are the keys of ``rows`` in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(col)) for col in columns) + " |" for row in rows]
    return "\n".join(lines)


def _metadata(
    *,
    base_models: list[str],
    method: str,
    library_name: str,
    pipeline_tag: str | None,
    datasets: list[str] | None,
    license: str | None,
) -> ModelCardData:
    return ModelCardData(
        base_model=list(base_models) or None,
        base_model_relation="merge",
        tags=["merge", "mudsc", method, "hf-mudsc"],
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        datasets=list(datasets) if datasets else None,
        license=license,
    )


def _section(title: str, *parts: str) -> str:
    return "\n\n".join([f"## {title}", *parts])


def hub_ids(names: Sequence[str]) -> list[str]:
    """The names that can stand in ``base_model`` metadata: Hub ids, not local folders."""
    return [n for n in names if could_be_hub_id(n)]


# What the top of a merged folder holds (``top`` of :func:`build_model_card`).
TOPS = ("joint", "standard", "none", "tasks", "task")


def _merged_part(merge_layers: int | None, num_layers: int | None) -> tuple[str, bool]:
    """What of each parent is merged, in words, and whether that is only part of the layers."""
    if merge_layers is None or num_layers is None or merge_layers >= num_layers:
        return "trunk", False
    return f"embeddings and first {merge_layers} of {num_layers} layers", True


def _parents_section(base_models: Sequence[str], task_folders: Sequence[str], top: str,
                     merge_layers: int | None, num_layers: int | None) -> str:
    part, partial = _merged_part(merge_layers, num_layers)
    if top == "task":
        return _section("What was merged", f"This folder holds the model of `{base_models[0]}` after a merge without "
                        f"training: a standard checkpoint with its {part} merged with the other parents'.")
    lines = [f"- `{model}` -> `{folder}/`" for model, folder in zip(base_models, task_folders)]
    root = {
        "joint": "The folder root holds the joint multi-task model ("
                 + (f"{part} shared; later layers and one head per parent)." if partial
                    else "shared trunk, one head per parent)."),
        "standard": "The folder root holds the merged model itself: the parents have no task heads and every layer "
                    "is merged, so one model serves them all.",
        "none": "The folder root holds no model: the parents have no task heads and only part of the layers is "
                "merged, so each parent keeps its own model in its folder.",
        "tasks": "The folder root holds no model: the parents' heads (extractive question answering, regression or "
                 "multi-label outputs) form no joint model, so each parent keeps its own model in its folder.",
    }[top]
    return _section(
        "What was merged",
        f"Parents, merged without training, each kept as a standard checkpoint with its {part} merged:",
        "\n".join(lines),
        root,
    )


def _method_section(method_title: str, papers: Sequence[Paper], recipe: Mapping[str, Any]) -> str:
    cites = "\n".join(f"- {p.reference}" for p in papers) or "- Plain weight averaging (no alignment)."
    recipe_yaml = yaml.safe_dump(scrub_secrets(dict(recipe)), sort_keys=False, allow_unicode=True).strip()
    return _section(
        "Method",
        f"**{method_title}**, made with `hf-mudsc`: the units of the parents are aligned, then merged,"
        " without any gradient step.",
        cites,
        "Recipe (also in the merge folder's `merge_recipe.json`):",
        f"```yaml\n{recipe_yaml}\n```",
    )


def _calibration_section(calibration: Mapping[str, Any] | None) -> str:
    if not calibration:
        return _section("Calibration data", "None: the merge is data-free (weights only).")
    lines = [f"- **{key}**:" + ("".join(f"\n  - {_cell(v)}" for v in value)  # a list of messages: one each
                               if isinstance(value, list) and all(isinstance(v, str) for v in value)
                               else f" {_cell(value)}")
             for key, value in scrub_secrets(dict(calibration)).items() if value not in (None, "", {}, [])]
    return _section("Calibration data", "\n".join(lines))


def _repair_section(repairs: Sequence[Mapping[str, Any]]) -> str:
    return _section(
        "Repair after alignment",
        "After the merge, hf-mudsc ran these closed-form repairs on the calibration data (no labels, no gradient"
        " step): `stats` renormalises units to the parents' statistics (after REPAIR, Jordan et al., ICLR 2023),"
        " `lsq` re-solves every merged linear map by least squares (after RegMean / PLeaS), `heads` refits each"
        " task head to its parent's outputs. They are additions of hf-mudsc, not part of the published methods"
        " cited above.",
        markdown_table([{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in repairs]),
    )


# Tasks that transformers serves with a model class but no ``pipeline`` (it dropped extractive QA's)
_AUTO_CLASSES = {"question-answering": "AutoModelForQuestionAnswering"}


def _loader(task: str, source: str) -> tuple[str, str]:
    """The import and the line that load a checkpoint at ``source`` (a Python expression) for ``task``:
    its ``pipeline``, or its Auto class where transformers has no pipeline for it."""
    from transformers.pipelines import SUPPORTED_TASKS

    auto = _AUTO_CLASSES.get(task)
    if auto is None or task in SUPPORTED_TASKS:
        return "from transformers import pipeline", f'task_model = pipeline("{task}", model={source})'
    return f"from transformers import {auto}", f"task_model = {auto}.from_pretrained({source})"


def _usage_section(
    model_id: str, pipeline_task: str | None, task_folders: Sequence[str], library_name: str, top: str
) -> str:
    task = pipeline_task or "<task>"
    imported, line = _loader(task, f'f"{{path}}/{task_folders[0]}"')
    tasks = (
        f"```python\nfrom huggingface_hub import snapshot_download\n{imported}\n\n"
        f'path = snapshot_download("{model_id}")  # or the path of a local copy\n'
        f"{line}\n```"
    )
    parts = [
        f"Each parent's merged model is a standard `{library_name}` checkpoint under "
        + ", ".join(f"`{f}/`" for f in task_folders) + ":",
        tasks,
    ]
    if top == "task":
        imported, line = _loader(task, f'"{model_id}"')
        parts = [f"This folder is a standard `{library_name}` checkpoint:", f"```python\n{imported}\n\n{line}\n```"]
    elif top == "joint":
        parts += ["The joint model predicts over the union of the parents' labels (parents with the same labels: "
                  "over those, by the mean of their heads' probabilities):",
                  ("```python\nimport hf_mudsc  # registers the joint model with the Auto classes\n"
                   f"from transformers import AutoModel\n\njoint = AutoModel.from_pretrained(\"{model_id}\")\n```")]
    elif top == "standard":
        parts += [("The parents have no task heads and every layer is merged, so all of them share one model, "
                   "a standard checkpoint at the top of the folder:"),
                  f"```python\nfrom transformers import AutoModel\n\nmodel = AutoModel.from_pretrained(\"{model_id}\")\n```"]
    return _section("How to load", *parts)


def build_model_card(
    *,
    base_models: list[str],
    method: str,
    method_title: str,
    recipe: Mapping[str, Any],
    library_name: str = "transformers",
    pipeline_tag: str | None = None,
    datasets: list[str] | None = None,
    calibration: Mapping[str, Any] | None = None,
    diagnostics: Sequence[Mapping[str, Any]] = (),
    repairs: Sequence[Mapping[str, Any]] = (),
    evaluation: Sequence[Mapping[str, Any]] | None = None,
    notes: Sequence[str] = (),
    selection: Sequence[Mapping[str, Any]] = (),
    license: str | None = None,
    task_name: str | None = None,
    heterogeneous: bool = False,
    model_id: str = "<repo-id or local folder>",
    task_folders: Sequence[str] | None = None,
    top: str = "joint",
    merge_layers: int | None = None,
    num_layers: int | None = None,
    base_model_ids: Sequence[str] | None = None,
) -> ModelCard:
    """Build the README.md card of a merged model.

    ``repairs``: one row per repair run after the merge (``MergeResult.repairs``);
    ``task_name``: the ``pipeline`` task of the usage snippet (defaults to ``pipeline_tag``);
    ``task_folders``: where each parent's merged checkpoint lives (default ``tasks/<i>``);
    ``model_id``: the Hub id or folder the snippets load from; ``top``: what the folder holds at its
    top: ``joint`` (the joint model), ``standard`` (one merged standard model), ``none`` (base models, a
    partial merge), ``tasks`` (heads that form no joint model), or ``task``
    (the card of one parent's merged checkpoint, the folder itself); ``merge_layers`` of
    ``num_layers``: a partial merge (``None``: every layer); ``base_model_ids``: the Hub ids for the
    ``base_model`` metadata (default: the names in ``base_models`` that are Hub ids).
    """
    if top not in TOPS:
        raise ValueError(f"top must be one of {', '.join(TOPS)}, got '{top}'")
    folders = list(task_folders) if task_folders is not None else [f"tasks/{i}" for i in range(len(base_models))]
    papers = cited_papers(method, str(recipe.get("mode", "")) or None, heterogeneous)
    title = (f"# {base_models[0]} after a {method_title} merge" if top == "task"
             else f"# {method_title} merge of {len(base_models)} models")
    body = [title, _parents_section(base_models, folders, top, merge_layers, num_layers)]
    body.append(_method_section(method_title, papers, recipe))
    body.append(_calibration_section(calibration))
    if selection:
        body.append(_section(
            "Automatic choice (`method: auto`)",
            "Every candidate below was merged from one statistics pass and scored, without labels, by how well its"
            " task models agree with their parents on calibration samples held out of the statistics (score ="
            " -KL(parent || merged) for task heads, the cosine of the last hidden states for base models); the best"
            " (`chosen`) is this model.", markdown_table(selection)))
    if repairs:
        body.append(_repair_section(repairs))
    if diagnostics:
        body.append(_section("Diagnostics per merge space", markdown_table(diagnostics)))
    if evaluation:
        body.append(_section("Evaluation", markdown_table(evaluation)))
    if notes:
        body.append(_section("Notes", "\n".join(f"- {note}" for note in notes)))
    body.append(_usage_section(model_id, task_name or pipeline_tag, folders, library_name, top))
    if papers:
        body.append(_section("Citation", "```bibtex\n" + "\n\n".join(p.bibtex for p in papers) + "\n```"))
    data = _metadata(
        base_models=list(base_model_ids) if base_model_ids is not None else hub_ids(base_models),
        method=method,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        datasets=datasets,
        license=license,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n")

"""The merged folder (DESIGN §3.6): the merged model at the top (the joint model, or for parents
without task heads the merged base model; none for a partial merge of those), one standard
checkpoint per parent under ``tasks/<i>/``, the recipe and transforms, and model cards."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import PRESETS, RECIPE_NAME
from .hetero.depth import describe_plan
from .hetero.width import differ_in_width, widths
from .io.card import build_model_card, hub_ids
from .transforms import TRANSFORMS_NAME, save_transforms

if TYPE_CHECKING:
    from .merger import MergeResult

PIPELINE_TAGS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForImageClassification": "image-classification",
    "ForImageClassificationWithTeacher": "image-classification",
    "ForMultipleChoice": "multiple-choice",
}


def pipeline_tag(model: Any) -> str:
    """The ``pipeline`` task of a model class (``feature-extraction`` for base models)."""
    name = type(model).__name__
    for suffix, tag in PIPELINE_TAGS.items():
        if name.endswith(suffix):
            return tag
    return "feature-extraction" if model.main_input_name != "pixel_values" else "image-feature-extraction"


def write_merge_folder(result: "MergeResult", folder: Path, *, max_shard_size: str | int,
                       evaluation: list[dict[str, Any]] | None = None) -> None:
    """Write everything of ``result`` into ``folder`` (an empty temporary folder)."""
    names = [p.name for p in result.parents]
    top = "joint" if result.has_heads else "none" if any(result.weights.private) else "standard"
    if top != "none":  # a partial merge of parents without heads is one model per parent, no single model
        result.model.save_pretrained(folder, max_shard_size=max_shard_size)
        _save_processor(result.parents[0].processor, folder)
    for i, (parent, task) in enumerate(zip(result.parents, result.task_models)):
        sub = folder / "tasks" / str(i)
        task.save_pretrained(sub, max_shard_size=max_shard_size)
        _save_processor(parent.processor, sub)
        _card(result, [names[i]], task, notes=[f"Task {i} of a merge of: {', '.join(names)}."],
              task_folders=["."], top="none").save(sub / "README.md")
    save_transforms(result.transforms, str(folder / TRANSFORMS_NAME))
    (folder / RECIPE_NAME).write_text(json.dumps(result.recipe(), indent=2, default=str))
    _card(result, names, result.task_models[0], evaluation=evaluation, top=top).save(folder / "README.md")


def _card(result: "MergeResult", names: list[str], model: Any, *, notes: list[str] = (),
          evaluation: list[dict[str, Any]] | None = None, task_folders: list[str] | None = None,
          top: str = "joint"):
    config = result.config
    recipe = {**config.to_dict(), "mode": config.resolved_mode, "alpha": config.resolved_alpha}
    calib = result.calibration or {}
    local = [n for n in names if n not in hub_ids(names)]
    extra = [f"Parents given as local folders (not in `base_model` metadata): {', '.join(local)}."] if local else []
    extra += hetero_notes(result)
    return build_model_card(
        base_models=names, method=config.method, method_title=PRESETS[config.method].title,
        recipe=recipe, pipeline_tag=pipeline_tag(model),
        datasets=[calib["name"]] if calib.get("name") else None, calibration=calib or None,
        diagnostics=result.report, evaluation=evaluation, notes=list(notes) + extra,
        task_folders=task_folders or [f"tasks/{i}" for i in range(len(names))], top=top,
        heterogeneous=bool(hetero_notes(result)),
    )


def hetero_notes(result: "MergeResult") -> list[str]:
    """Card lines for parents of different depths (the layer map) or widths (the merged widths)."""
    names = [p.name for p in result.parents]
    notes = [describe_plan(result.depth, names, result.config.unpaired_layers)] if result.depth else []
    maps = [p.unit_map for p in result.parents]
    if differ_in_width(maps):
        kinds = {kind: [widths(m)[kind] for m in maps] for kind in widths(maps[0])}
        shown = "; ".join(f"{kind} {max(d)} (parents {', '.join(map(str, d))})" for kind, d in kinds.items())
        notes.append(f"Parents of different widths, zipped to the widest: {shown}.")
    return notes


def _save_processor(processor: Any, folder: Path) -> None:
    if processor is not None:
        processor.save_pretrained(folder)

"""The merged folder (DESIGN §3.6): the merged model at the top (the joint model, or for parents
without task heads the merged base model; none for a partial merge of those), one standard
checkpoint per parent under ``tasks/<i>/``, the recipe and transforms, and model cards."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol, Sequence

from .apply import MergedWeights
from .config import PRESETS, RECIPE_NAME, ZIPIT_BUDGET, ZIPIT_DECAY, MergeConfig
from .hetero.depth import describe_plan
from .hetero.width import differ_in_width, widths
from .io.card import build_model_card, hub_ids
from .loading import Parent, saved_file
from .transforms import TRANSFORMS_NAME, Transforms, save_transforms


class MergeOutputs(Protocol):
    """What the folder is written from (a :class:`hf_mudsc.merger.MergeResult`): this module
    reads a merge and never imports the merger."""

    parents: Sequence[Parent]
    config: MergeConfig
    transforms: Transforms
    weights: MergedWeights
    report: list[dict[str, Any]]
    calibration: dict[str, Any] | None
    selection: list[dict[str, Any]] | None
    repairs: list[dict[str, Any]]
    depth: Any  # the layer alignment of parents of different depths (None: same depth)
    has_heads: bool
    forms_joint: bool
    model: Any
    task_models: list[Any]

    def recipe(self) -> dict[str, Any]: ...


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


def write_merge_folder(result: MergeOutputs, folder: Path, *, max_shard_size: str | int,
                       evaluation: list[dict[str, Any]] | None = None) -> None:
    """Write everything of ``result`` into ``folder`` (an empty temporary folder)."""
    names = [card_name(p, result.parents) for p in result.parents]
    if result.has_heads:  # extractive QA, regression, multi-label heads form no joint model: task folders only
        top = "joint" if result.forms_joint else "tasks"
    else:
        top = "none" if any(result.weights.private) else "standard"
    # sentence encoders: the merged base model serves each parent's pooling as the parent did
    pooling = [None if result.has_heads else sentence_transformers_files(p, t.config.hidden_size)
               for p, t in zip(result.parents, result.task_models)]
    if top not in ("none", "tasks"):  # one model per parent, no single model
        result.model.save_pretrained(folder, max_shard_size=max_shard_size)
        _save_processor(result.parents[0].processor, folder)
        if pooling[0] is not None and all(files == pooling[0] for files in pooling):
            _write_files(folder, pooling[0])
    for i, (parent, task) in enumerate(zip(result.parents, result.task_models)):
        sub = folder / "tasks" / str(i)
        task.save_pretrained(sub, max_shard_size=max_shard_size)
        _save_processor(parent.processor, sub)
        if pooling[i] is not None:
            _write_files(sub, pooling[i])
        _card(result, [names[i]], task, notes=[f"Task {i} of a merge of: {', '.join(names)}."],
              task_folders=["."], top="task", ids=_hub_ids([parent])).save(sub / "README.md")
    save_transforms(result.transforms, str(folder / TRANSFORMS_NAME))
    (folder / RECIPE_NAME).write_text(json.dumps(result.recipe(), indent=2, default=str))
    _card(result, names, result.task_models[0], evaluation=evaluation, top=top).save(folder / "README.md")


def _card(result: MergeOutputs, names: list[str], model: Any, *, notes: list[str] = (),
          evaluation: list[dict[str, Any]] | None = None, task_folders: list[str] | None = None,
          top: str = "joint", ids: list[str] | None = None):
    config = result.config
    recipe = {**config.to_dict(), "mode": config.resolved_mode, "alpha": config.resolved_alpha,
              "zip_budget": config.resolved_zip_budget, "zip_decay": config.resolved_zip_decay}
    if config.method == "zipit":
        notes = [*notes, f"ZipIt! settings as published (Stoica et al., ICLR 2024, Sec. 4.3, and the authors' "
                         f"matching code): decay alpha = {ZIPIT_DECAY}, same-model budget beta = 0.125 of all merges, "
                         f"shared equally by the models ({ZIPIT_BUDGET} of each model's units for two models)."]
    calib = result.calibration or {}
    ids = _hub_ids(result.parents) if ids is None else ids
    local = [n for n in names if n not in ids]
    extra = [f"Parents given as local folders (not in `base_model` metadata): {', '.join(local)}."] if local else []
    extra += hetero_notes(result)
    return build_model_card(
        base_models=names, method=config.method, method_title=PRESETS[config.method].title,
        recipe=recipe, pipeline_tag=pipeline_tag(model),
        datasets=[calib["name"]] if calib.get("name") else None, calibration=calib or None,
        diagnostics=result.report, repairs=result.repairs, evaluation=evaluation, notes=list(notes) + extra,
        selection=result.selection or (),
        task_folders=task_folders or [f"tasks/{i}" for i in range(len(names))], top=top,
        merge_layers=config.merge_layers, num_layers=result.parents[0].unit_map.num_layers, base_model_ids=ids,
        heterogeneous=bool(hetero_notes(result)),
    )


def card_name(parent: Any, others: Sequence[Any] = ()) -> str:
    """How cards name a parent: a Hub id as given, a local folder by its folder name, never by a path
    (nor by the ``_name_or_path`` its config may record: for a fine-tune, the model it started from);
    by its last two folders when another of ``others`` has its folder name (``seed0/checkpoint-500``)."""
    if parent.local_path is None:
        return parent.name
    path = parent.local_path
    clash = any(o.local_path is not None and o.local_path.name == path.name and o.local_path != path for o in others)
    return f"{path.parent.name}/{path.name}" if clash and path.parent.name else path.name


def _hub_ids(parents: list[Any]) -> list[str]:
    """The parents given as Hub ids (``base_model`` metadata): never a local folder."""
    return hub_ids([p.name for p in parents if p.local_path is None])


def hetero_notes(result: MergeOutputs) -> list[str]:
    """Card lines for parents of different depths (the layer map) or widths (the merged widths)."""
    names = [p.name for p in result.parents]
    notes = [describe_plan(result.depth, names, result.config.unpaired_layers)] if result.depth else []
    maps = [p.unit_map for p in result.parents]
    if differ_in_width(maps):
        kinds = {kind: [widths(m)[kind] for m in maps] for kind in widths(maps[0])}
        shown = "; ".join(f"{kind} {max(d)} (parents {', '.join(map(str, d))})" for kind, d in kinds.items())
        notes.append(f"Parents of different widths, zipped to the widest: {shown}.")
    return notes


# sentence-transformers: the files of a saved model, and the modules (by class name: their module paths
# moved between versions) that a merged encoder serves as they are: the encoder itself, at the top of the
# folder, and the modules without weights, each with its folder's config.json (Pooling's is required)
_ST_CONFIGS = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_ST_MODULES = {"Transformer": False, "Pooling": True, "Normalize": False}  # class -> its config is required


def sentence_transformers_files(parent: Parent, width: int) -> dict[str, bytes] | None:
    """The sentence-transformers files saved with a parent (``modules.json``, its settings and the
    configs of its modules), when its modules are the encoder itself at the folder's top, pooling and
    normalisation, which have no weights; ``None`` otherwise (none saved, or a module with weights in
    the parent's frame, such as a Dense layer). The pooling config states the merged model's ``width``
    (a narrower parent's stated its own)."""
    modules = _saved_file(parent, "modules.json")
    try:
        entries = json.loads(modules) if modules is not None else None
    except ValueError:
        return None
    if not isinstance(entries, list):
        return None
    files = {}
    for entry in entries:
        kind, path = str(entry.get("type", "")).rsplit(".", 1)[-1], entry.get("path", "")
        if kind not in _ST_MODULES or (kind == "Transformer") != (path == ""):
            return None
        if kind != "Transformer":
            config = _saved_file(parent, f"{path}/config.json")
            if config is None and _ST_MODULES[kind]:
                return None
            files[f"{path}/config.json"] = _pooling_width(config, width) if kind == "Pooling" and config else config
    for name in _ST_CONFIGS:
        files[name] = _saved_file(parent, name)
    return {name: data for name, data in files.items() if data is not None}


def _pooling_width(config: bytes, width: int) -> bytes:
    """A pooling config stating ``width`` as its embedding dimension (``embedding_dimension``, or
    ``word_embedding_dimension`` before sentence-transformers 5), written as it was otherwise, so that
    parents whose configs differ only in that dimension give the same bytes."""
    return re.sub(rb'("(?:word_)?embedding_dimension"\s*:\s*)\d+', rb"\g<1>" + str(width).encode(), config)


def _saved_file(parent: Parent, name: str) -> bytes | None:
    """The bytes of a file saved with a parent (:func:`saved_file`); ``None`` when none is or it cannot
    be fetched."""
    try:
        found = saved_file(parent.name, name, revision=parent.revision)
    except OSError:
        return None
    return found.read_bytes() if found else None


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _save_processor(processor: Any, folder: Path) -> None:
    if processor is not None:
        processor.save_pretrained(folder)

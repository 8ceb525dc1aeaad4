"""Load the parents (local folders or Hub ids) and check that they can be merged.

Everything here runs before any forward pass, so a mismatch fails in seconds with a
message that names it.
"""
from __future__ import annotations

import hashlib
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import transformers
from safetensors import SafetensorError
from transformers import AutoConfig, PreTrainedModel

from .paths import could_be_hub_id
from .quality import MergeQualityWarning
from .spill import tensor_bytes
from .unitmaps import UnitMap, UnitMapError, unit_map_of


class ParentError(ValueError):
    """The parents cannot be loaded or merged together."""


@dataclass
class Parent:
    """One model to merge: its name (Hub id or folder), the model, its unit map and its
    tokenizer or image processor (``None`` when the folder has none)."""

    name: str
    model: PreTrainedModel
    unit_map: UnitMap
    processor: Any = None
    digest: str | None = field(default=None, repr=False)  # of the weights as loaded (see sha256)
    revision: str | None = None  # the Hub revision it was loaded at

    def sha256(self) -> str | None:
        """:func:`weights_digest` of the parent as loaded (computed once; a parent expanded to another
        depth keeps the digest of the model it was expanded from)."""
        if self.digest is None:
            self.digest = weights_digest(self.model)
        return self.digest

    @property
    def local_path(self) -> Path | None:
        path = Path(self.name)
        return path.resolve() if path.is_dir() else None

    @property
    def modality(self) -> str:
        return "image" if self.model.main_input_name == "pixel_values" else "text"


def load_parent(
    source: str | Path | PreTrainedModel,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    device_map: Any = None,
    torch_dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    model_class: str | type | None = None,
) -> Parent:
    """Load one parent with the class named in its config (or ``model_class``, a transformers class or
    its name: e.g. ``"BertModel"`` merges a classifier's encoder), plus its processor."""
    hub = dict(revision=revision, token=token, trust_remote_code=trust_remote_code)
    wanted = None if model_class is None else _named_class(model_class)
    torch_dtype = _dtype(torch_dtype)
    if isinstance(source, PreTrainedModel):
        name = str(getattr(source, "name_or_path", "") or f"in-memory {type(source).__name__}")  # never a Hub id
        if wanted is not None and type(source) is not wanted:
            raise ParentError(f"parent '{name}' is a loaded {type(source).__name__}, not the model class "
                              f"{wanted.__name__} asked for: load it as that class")
        # the processor saved where the model came from, as transformers.pipeline finds it for a model object
        found = could_be_hub_id(name) or Path(name).is_dir()
        processor = _load_processor(name, source, hub) if found else None
        _check_finite(name, source)
        return Parent(name, *_mergeable(name, source.eval()), processor)
    name = str(source)
    _check_local(name)
    if not allow_pickle:
        _refuse_pickle_only(name)
    try:
        if not trust_remote_code:
            _refuse_custom_code(name, revision=revision, token=token)
        config = AutoConfig.from_pretrained(name, **hub)
    except (OSError, ValueError) as err:
        if isinstance(err, ParentError):
            raise
        raise ParentError(f"cannot load parent '{name}': {_first_line(err)}") from err
    cls = _model_class(config) if wanted is None else wanted
    load = dict(config=config, device_map=device_map, dtype=torch_dtype, use_safetensors=None if allow_pickle else True,
                output_loading_info=True, **hub)
    try:
        model, info = cls.from_pretrained(name, **load)
        missing = sorted(info.get("missing_keys") or ())
        if missing and all(k.startswith("pooler.") for k in missing) \
                and "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
            # a base model saved without its pooler (add_pooling_layer=False, as sentence encoders are)
            model, info = cls.from_pretrained(name, add_pooling_layer=False, **load)
    except (OSError, ValueError, SafetensorError) as err:  # missing or unreadable files, bad configs
        if isinstance(err, SafetensorError):
            hint = " (the safetensors file is truncated or corrupt)"
        elif "safetensors" in str(err).lower() and not allow_pickle:
            hint = f" ({_PICKLE_HINT})"
        else:
            hint = ""
        raise ParentError(f"cannot load the weights of parent '{name}': {_first_line(err)}{hint}") from err
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # transformers fills them with random values and goes on
        raise ParentError(f"parent '{name}' lacks {len(missing)} of its model's weights in its checkpoint (e.g. "
                          f"{', '.join(missing[:3])}): the checkpoint is incomplete or of another model class")
    unused = sorted(info.get("unexpected_keys") or ())
    if unused and not config.architectures:  # a head the guessed class lacks: transformers drops it and goes on
        raise ParentError(f"parent '{name}' has weights that {type(model).__name__} does not use (e.g. "
                          f"{', '.join(unused[:3])}) and its config.json names no architecture: add its class, e.g. "
                          "\"architectures\": [\"BertForSequenceClassification\"]")
    model.eval()
    _check_in_memory(name, model)
    _check_finite(name, model)
    return Parent(name, *_mergeable(name, model), _load_processor(name, model, hub), revision=revision)


def _mergeable(name: str, model: PreTrainedModel) -> tuple[PreTrainedModel, UnitMap]:
    """The model and its unit map; a model whose head no unit map covers (masked or causal LM,
    pretraining heads) gives its base model, with a warning that the head is not merged. A
    multiple-choice head is refused, whether a unit map covers it or not."""
    if type(model).__name__.endswith("ForMultipleChoice"):
        raise ParentError(f"'{name}' has a multiple-choice head, which is not supported (its inputs have a "
                          "choice dimension that calibration texts lack): merge the parents' base models")
    try:
        return model, unit_map_of(model)
    except UnitMapError as err:
        base = model.base_model
        if base is model:
            raise
        try:
            umap = unit_map_of(base)
        except UnitMapError:
            raise err from None
        with torch.device("meta"):  # a base model the merge rebuilds from its config (ViT's mask token: not)
            rebuilt = {n for n, _ in type(base)(base.config).named_parameters()}
        if not {n for n, _ in base.named_parameters()} <= rebuilt:
            raise err from None
    warnings.warn(f"parent '{name}' is {_article(type(model).__name__)}, whose head is not merged: its base model "
                  f"({type(base).__name__}) is merged", MergeQualityWarning, stacklevel=3)
    return base, umap


def _article(noun: str) -> str:
    return f"{'an' if noun[:1].upper() in 'AEIOU' else 'a'} {noun}"


def weights_digest(model: torch.nn.Module) -> str | None:
    """sha256 of a model's parameters (names, dtypes, shapes and bytes, in name order), which the recipe
    keeps so that a re-apply can tell whether it has the parents that were merged; ``None`` for a model
    whose parameters are not all in memory (offloaded to disk by a device map)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.device.type == "meta":
            return None
        digest.update(f"{name}:{param.dtype}:{tuple(param.shape)};".encode())
        digest.update(tensor_bytes(param))
    return digest.hexdigest()


def _check_local(name: str) -> None:
    """A name that can only be a local path must be a folder with a config.json (else the Hub
    client answers with a confusing message about repo id syntax)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ParentError(f"parent folder '{name}' has no config.json: not a saved transformers model")
        return
    if path.exists():
        raise ParentError(f"parent '{name}' is a file, not a model folder")
    if not could_be_hub_id(name):
        raise ParentError(f"parent folder '{name}' not found")


_PICKLE_HINT = ("pickle checkpoints are refused: loading one can run arbitrary code; pass allow_pickle=True "
                "(command line: --allow-pickle) only if you trust its source")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt", "model.pth")


def _refuse_pickle_only(name: str) -> None:
    """A local folder whose weights exist only as a pickle checkpoint is refused up front, with
    a message that says how to allow it (transformers would only say that no safetensors file exists)."""
    path = Path(name).expanduser()
    if not path.is_dir() or any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists():
        return
    found = [f for f in _PICKLE_WEIGHTS if (path / f).is_file()]
    if found:
        raise ParentError(f"parent '{name}' is stored as a pickle checkpoint ({found[0]}); {_PICKLE_HINT}")


def _refuse_custom_code(name: str, *, revision: str | None, token: str | bool | None) -> None:
    """A config that names custom code (``auto_map``) is refused unless trust_remote_code is set:
    transformers would either refuse with no hint of the option, or silently load its built-in
    class in place of the model's own code."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(name, revision=revision, token=token)
    auto_map = config.get("auto_map")
    if auto_map:
        values = [v for entry in auto_map.values() for v in (entry if isinstance(entry, (list, tuple)) else [entry])]
        code = ", ".join(sorted({str(v) for v in values if v}))
        raise ParentError(f"parent '{name}' needs custom code ({code}), which is not run unless you pass "
                          "trust_remote_code=True (command line: --trust-remote-code); do so only if you trust "
                          "its source")


# Config fields that do not change what an encoder with these heads computes: labels and bookkeeping,
# runtime switches, the initialiser's scale, generation's token ids, the tying and the image decoder of
# language / masked-image heads that are not merged (and every dropout rate, by name). Parents and
# task models may differ in them.
FREE_CONFIG_FIELDS = frozenset({
    "id2label", "label2id", "problem_type", "finetuning_task", "architectures", "_name_or_path", "dtype",
    "transformers_version", "tokenizer_class", "initializer_range", "use_cache", "output_attentions",
    "output_hidden_states", "return_dict", "torchscript", "chunk_size_feed_forward", "gradient_checkpointing",
    "bos_token_id", "eos_token_id", "tie_word_embeddings", "encoder_stride",
})
# The widths and the depth: a merge of parents of different shapes reconciles them (hf_mudsc.hetero).
SHAPE_FIELDS = frozenset({"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "head_dim", "pooler_output_size"})


def config_differences(a: Any, b: Any, allowed: frozenset[str] = frozenset()) -> list[str]:
    """The fields in which two configs of one class differ in what their model computes: those the
    config class defines (an unknown key that one of them carries is read by no model code), less
    :data:`FREE_CONFIG_FIELDS`, dropout rates and ``allowed``."""
    da, db = a.to_dict(), b.to_dict()
    known = type(a)().to_dict().keys()
    return sorted(k for k in known
                  if k not in FREE_CONFIG_FIELDS and k not in allowed and "dropout" not in k and da.get(k) != db.get(k))


def check_compatible(parents: Sequence[Parent]) -> None:
    """Refuse parents that cannot be merged: fewer than two, different families or heads (or
    multiple-choice heads), configs that differ beyond labels, widths and depth (activation, norm
    epsilon, positions, patch size, ...), different dtypes, different spaces outside the layers,
    different head sizes, more than two parents of different depths, different tokenizers or image
    processors. Different depths and widths are merged (``hf_mudsc.hetero``)."""
    from .hetero.width import structure_mismatch, width_mismatch

    if len(parents) < 2:
        raise ParentError(f"merging needs at least two parents, got {len(parents)}")
    first = parents[0]
    for p in parents[1:]:
        if p.unit_map.family != first.unit_map.family:
            raise ParentError(f"parents are of different families: '{first.name}' is {first.unit_map.family}, "
                              f"'{p.name}' is {p.unit_map.family}")
        if type(p.model).__name__ != type(first.model).__name__:
            raise ParentError(f"parents have different heads: '{first.name}' is {type(first.model).__name__}, "
                              f"'{p.name}' is {type(p.model).__name__}")
        diff = config_differences(first.model.config, p.model.config, _shape_fields(first))
        if diff:
            values = [getattr(x.model.config, diff[0], None) for x in (first, p)]
            raise ParentError(f"parents differ in config field '{diff[0]}' ({values[0]!r} in '{first.name}', "
                              f"{values[1]!r} in '{p.name}'), which a merge cannot reconcile")
        if p.model.dtype != first.model.dtype:
            raise ParentError(f"parents are in different dtypes ({first.model.dtype} in '{first.name}', "
                              f"{p.model.dtype} in '{p.name}'): load them in one with torch_dtype= "
                              "(command line: --torch-dtype float32)")
        outside = [_outside_layers(x.unit_map) for x in (first, p)]
        if outside[0] != outside[1]:
            projected = "embeddings" in outside[0] or "embeddings" in outside[1]
            raise ParentError(f"parents differ in structure: '{first.name}' has the spaces {outside[0]} outside its "
                              f"layers, '{p.name}' {outside[1]}" + (
                                  " (one projects embeddings narrower than its layers, embedding_size < hidden_size, "
                                  "the other does not)" if projected else ""))
        _check_processors(first, p)
    maps, names = [p.unit_map for p in parents], [p.name for p in parents]
    mismatch = width_mismatch(maps, names) or structure_mismatch([p.model for p in parents], maps, names)
    if mismatch:
        raise ParentError(mismatch)
    depths = [p.unit_map.num_layers for p in parents]
    if len(set(depths)) > 1 and len(parents) > 2:
        raise ParentError(f"parents of different depths ({depths} layers) can be merged two at a time only")


def _shape_fields(parent: Parent) -> frozenset[str]:
    """The config fields that hold widths and depth, as the config stores them (DistilBERT: ``dim``,
    ``n_layers``, ``hidden_dim``, ...)."""
    config = parent.model.config
    names = SHAPE_FIELDS | set(parent.unit_map.width_fields.values())
    return frozenset(names | {config.attribute_map.get(n, n) for n in names})


def _outside_layers(umap: UnitMap) -> list[str]:
    """Names of the spaces that belong to no layer (residual stream, pooler)."""
    return sorted(s.name for s in umap.spaces if not 0 <= s.layer < umap.num_layers)


def _check_processors(a: Parent, b: Parent) -> None:
    if a.processor is None or b.processor is None:
        if a.processor is not None or b.processor is not None:  # one could be checked: say it was not
            kind = "tokenizers" if a.modality == "text" else "image processors"
            have, lack = (a, b) if a.processor is not None else (b, a)
            warnings.warn(f"cannot check that the parents' {kind} agree: '{lack.name}' has none saved (calibration "
                          f"data is prepared with the one of '{have.name}'); make sure it is the same",
                          MergeQualityWarning, stacklevel=3)
        return
    if a.modality == "text":
        va, vb = a.processor.get_vocab(), b.processor.get_vocab()
        if va != vb:
            raise ParentError(f"parents use different tokenizers: '{a.name}' has a vocabulary of {len(va)} tokens, "
                              f"'{b.name}' of {len(vb)}" + ("" if len(va) != len(vb) else " with different ids"))
        return
    keys = ("size", "crop_size", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
            "image_std", "do_center_crop", "resample")
    da, db = a.processor.to_dict(), b.processor.to_dict()
    diff = [k for k in keys if da.get(k) != db.get(k)]
    if diff:
        raise ParentError(f"parents use different image processors: '{a.name}' and '{b.name}' differ in {diff[0]} "
                          f"({da.get(diff[0])} vs {db.get(diff[0])})")


# dtype names as users write them -> torch dtypes ("auto": the checkpoint's own)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


def _dtype(value: Any) -> Any:
    """``torch_dtype`` as transformers takes it: a torch dtype, ``"auto"`` or ``None``, from any of the
    names in :data:`_DTYPES` (``torch.`` in front allowed)."""
    if value is None or isinstance(value, torch.dtype) or value == "auto":
        return value
    name = str(value).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise ParentError(f"torch_dtype {value!r} is not a dtype: use one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _named_class(model_class: str | type) -> type[PreTrainedModel]:
    """A transformers model class given as itself or by name."""
    cls = getattr(transformers, model_class, None) if isinstance(model_class, str) else model_class
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise ParentError(f"model class {model_class!r} is not a transformers model class (e.g. 'BertModel', "
                          "'BertForSequenceClassification')")
    return cls


def _model_class(config) -> type[PreTrainedModel]:
    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel  # type: ignore[return-value]


# The files that say a tokenizer or an image processor was saved with the model.
_PROCESSOR_FILES = {
    "text": ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
             "sentencepiece.bpe.model"),
    "image": ("preprocessor_config.json",),
}


def _load_processor(name: str, model: PreTrainedModel, hub: dict) -> Any:
    """The tokenizer or image processor saved with the model; ``None`` when none was saved
    (transformers would build an empty tokenizer from the config alone). One that is saved
    but cannot be loaded is an error, not a silent ``None``."""
    from transformers import AutoImageProcessor, AutoTokenizer

    image = model.main_input_name == "pixel_values"
    if not _has_any_file(name, _PROCESSOR_FILES["image" if image else "text"], hub):
        return None
    loader = AutoImageProcessor if image else AutoTokenizer
    try:
        return loader.from_pretrained(name, **hub)
    except (OSError, ValueError, KeyError, TypeError) as err:
        kind = "image processor" if image else "tokenizer"
        raise ParentError(f"cannot load the {kind} saved with parent '{name}': {_first_line(err)}; fix or remove "
                          "its files") from err


def _has_any_file(name: str, files: Sequence[str], hub: dict) -> bool:
    """Whether the local folder or Hub repo ``name`` holds one of ``files``."""
    return any(saved_file(name, f, revision=hub.get("revision"), token=hub.get("token")) for f in files)


def saved_file(name: str, filename: str, *, revision: str | None = None, token: Any = None) -> Path | None:
    """The file ``filename`` saved with the model ``name`` (a local folder, or a Hub repo at
    ``revision``, fetched into the cache); ``None`` when it has none (or ``name`` is neither)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    if not could_be_hub_id(name):
        return None
    from transformers.utils import cached_file

    found = cached_file(name, filename, revision=revision, token=token, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False)
    return Path(found) if found else None


def _check_in_memory(name: str, model: torch.nn.Module) -> None:
    """Merging reads every weight: parameters offloaded by a ``device_map`` (left on the meta
    device, e.g. with ``"disk"`` entries) cannot be merged."""
    offloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        raise ParentError(f"parent '{name}' has {len(offloaded)} parameters offloaded by its device_map "
                          f"(e.g. '{offloaded[0]}'); merging needs every weight on a device: use a device_map "
                          "without 'disk' entries")


def _check_finite(name: str, model: torch.nn.Module) -> None:
    bad = non_finite(model.named_parameters())
    if bad is not None:
        raise ParentError(f"parent '{name}' has NaN or infinite values in '{bad}'")


def non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinite values (tensors on the meta
    device, not in memory, are not read); ``None`` when all are finite."""
    return next((name for name, t in tensors if t.is_floating_point() and t.device.type != "meta"
                 and not bool(torch.isfinite(t).all())), None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


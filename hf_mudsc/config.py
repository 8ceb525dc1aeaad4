"""MergeConfig: the recipe of a merge, validated up front, saved and loaded as JSON.

Every method is a preset of one engine: a unit matching mode (``permute`` or ``zip``) and a
blend ``alpha`` of weight similarity (1) and activation similarity (0).
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Literal

from .repair import REPAIRS

Mode = Literal["permute", "zip"]
RECIPE_NAME = "merge_recipe.json"


@dataclass(frozen=True)
class Preset:
    """What a method fixes: its mode, its alpha, whether they may be changed, and its default
    zip budget and decay (used in zip mode)."""

    mode: Mode
    alpha: float
    match: bool = True
    fixed_alpha: bool = True
    fixed_mode: bool = True
    title: str = ""
    zip_budget: float = 0.0
    zip_decay: float = 0.0
    repair: tuple[str, ...] = ()


# ZipIt! as published (Stoica et al., ICLR 2024, Sec. 4.3 and the authors' matching code): decay
# alpha = 0.3 and a same-model budget beta = 0.125 of all merges, split equally between the models;
# with two parents that is 0.0625 of each model's units (this engine's zip_budget is per model).
ZIPIT_DECAY = 0.3
ZIPIT_BUDGET = 0.0625
# the repairs of the mudsc preset (the product's default); the published presets repair nothing
DEFAULT_REPAIR = ("stats", "lsq", "heads")

PRESETS: dict[str, Preset] = {
    "average": Preset("permute", 0.0, match=False, title="plain weight averaging"),
    "weight-matching": Preset("permute", 1.0, title="Git Re-Basin weight matching"),
    "activation-matching": Preset("permute", 0.0, title="Git Re-Basin activation matching"),
    "zipit": Preset("zip", 0.0, title="ZipIt!", zip_budget=ZIPIT_BUDGET, zip_decay=ZIPIT_DECAY),
    "mudsc": Preset("zip", 0.5, fixed_alpha=False, fixed_mode=False, title="MuDSC (dual-space merging)",
                    zip_budget=0.5, zip_decay=0.5, repair=DEFAULT_REPAIR),
    "auto": Preset("zip", 0.5, title="automatic: the candidate merge that agrees best with its parents "
                                     "on held-out calibration data"),
}


# what to_dict adds to the fields: the values the preset filled in
# Fields that change the collected statistics (the seed also draws the calibration rows).
STATISTICS_FIELDS = ("residual_layers", "max_tokens_per_batch", "statistics_samples", "seed")
RESOLVED = ("resolved_mode", "resolved_alpha", "resolved_zip_budget", "resolved_zip_decay", "resolved_repair")


class ConfigError(ValueError):
    """A merge parameter is out of range or contradicts its method."""


@dataclass(frozen=True)
class MergeConfig:
    """How to merge.

    Args:
        method: a preset: ``mudsc``, ``zipit``, ``weight-matching``, ``activation-matching``,
            ``average``; or ``auto``: several candidates (presets and zip settings) are merged from one
            statistics pass and the one whose task models agree best with their parents on a held-out
            slice of the calibration data (no labels) is returned (``hf_mudsc.select``).
        mode: ``zip`` (merged units may join units of one model) or ``permute``; default: the preset's.
        alpha: weight of weight similarity in ``S = alpha*S_w + (1-alpha)*S_act``; default: the preset's.
        merge_layers: merge the embeddings and the first L layers; later layers stay per task
            (``None``: all layers).
        zip_budget: fraction of each model's units that may be merged with units of the same model
            (beta); default: the preset's.
        zip_decay: similarity of a merged unit to the rest = decay * min of its members'; default: the
            preset's.
        holdout: with ``method="auto"``, the fraction of the calibration samples held out to score the
            candidates (never used for the statistics).
        max_sweeps, patience, tol: coordinate descent over spaces (only when ``0 < alpha``): at most
            ``max_sweeps`` weight sweeps, stopping after ``patience`` sweeps in a row that each gain
            less than the fraction ``tol`` of the best score so far (a sweep's transforms replace
            the best ones only when they gain more than 1e-4 of it). The default 1e-3 stops a
            BERT-base merge after 2-3 weight sweeps instead of 4 (later ones gained a few 1e-4
            there, at 20-30 s each), with the same accuracy as 1e-4 on the quality benchmarks'
            pairs (README, Results: merge quality).
        residual_layers: which layer inputs feed the residual stream's statistics (``None``: all).
        max_tokens_per_batch: the statistics pass's cap on tokens per batch per site (a random subset;
            the repairs have their own, ``repair_tokens_per_batch``); ``None``: every token.
            The default 256 keeps the statistics pass near one forward pass at BERT-base (the outer
            products of every token cost about twice the forward) and still gives the FFN space of
            the default 256 texts in batches of 16 more samples than units.
        statistics_samples: the statistics pass reads the first this many calibration samples (of
            the seeded draw), the repairs all of them; ``None``: all. The solve needs correlations,
            which settle with fewer samples than the repairs' refits need: on the 8 pairs of the
            quality benchmarks, statistics on the default 512 of 1024 samples gave no pair more
            than 0.6 points less joint accuracy than statistics on all 1024 (0.2 more on average),
            where repairs on 512 lost 0.2-1.2 on every pair (README, Results: merge quality); it
            halves the statistics pass of a merge on 1000 texts. Below 512 samples it changes nothing.
        seed: seeds the calibration rows drawn, the token subsets and the sweep order.
        repair: closed-form repairs run after the merge on the calibration data (``stats``, ``lsq``,
            ``heads``; a comma-separated string is accepted; ``"none"`` or ``()``: no repair); always run
            in that order. Default: the preset's, all three for ``mudsc`` and none for the published
            presets (a repair is not part of their papers). With ``auto``: when given, run on every
            candidate; by default, each candidate gets its own method's.
        repair_samples: the repairs run on the first this many calibration samples (of the seeded
            draw); ``None`` (default): on all of them. Their cost grows with the data (the merged
            model runs each layer about once more, and on the samples the statistics did not read
            the parents too), the solve's does not, so a cap bounds the cost of a
            merge on much data; on the quality benchmarks, repairs on 256 of 1024 samples lose about
            a point of accuracy against repairs on all 1024 (README, Results: merge quality).
        repair_tokens_per_batch: cap on the tokens per batch that each repaired map is fitted on (a
            random subset, as ``max_tokens_per_batch`` is for the statistics); ``None``: every token.
            Fewer make the repairs' ridge sums (about a fifth of the repairs at BERT-base) cheaper;
            the models still run over every token. On the quality benchmarks, 128 lost 0.1 points
            of joint accuracy on average with 1024 samples (at most 0.3 on a pair) and up to 0.8 with
            256 (README, Results: merge quality), so the default stays at 256; with many samples,
            128 is the cheaper choice (a BERT-base merge of 1000 texts: 592 -> 540 s).
        unpaired_layers: parents of different depths: a deeper parent's layer without a partner
            writes to the residual stream whole (``keep``) or averaged with the shallower
            parent's identity layer (``average``, pre-LN families only).
    """

    method: str = "mudsc"
    mode: Mode | None = None
    alpha: float | None = None
    merge_layers: int | None = None
    zip_budget: float | None = None
    zip_decay: float | None = None
    holdout: float = 0.25
    max_sweeps: int = 4
    patience: int = 1
    tol: float = 1e-3
    residual_layers: tuple[int, ...] | None = None
    max_tokens_per_batch: int | None = 256
    statistics_samples: int | None = 512
    seed: int = 0
    repair: tuple[str, ...] | None = None
    repair_samples: int | None = None
    repair_tokens_per_batch: int | None = 256
    unpaired_layers: Literal["keep", "average"] = "keep"

    def __post_init__(self) -> None:
        if self.method not in PRESETS:
            raise ConfigError(f"unknown method '{self.method}'; choose one of: {', '.join(PRESETS)}")
        preset = PRESETS[self.method]
        if self.method == "auto":
            chosen = [n for n in ("mode", "alpha", "zip_budget", "zip_decay") if getattr(self, n) is not None]
            if chosen:
                raise ConfigError(f"method 'auto' chooses {', '.join(chosen)} itself: drop them, or pick a method "
                                  "such as 'mudsc' to set them")
        if self.mode is not None and self.mode not in ("permute", "zip"):
            raise ConfigError(f"mode must be 'permute' or 'zip', got '{self.mode}'")
        if self.mode is not None and preset.fixed_mode and self.mode != preset.mode:
            raise ConfigError(f"method '{self.method}' uses mode '{preset.mode}'; use method='mudsc' to choose the mode")
        if self.alpha is not None:
            if not _real(self.alpha) or not 0.0 <= float(self.alpha) <= 1.0:
                raise ConfigError(f"alpha must be in [0, 1], got {self.alpha!r}")
            if preset.fixed_alpha and float(self.alpha) != preset.alpha:
                raise ConfigError(f"method '{self.method}' uses alpha={preset.alpha}; use method='mudsc' to choose alpha")
        for name in ("zip_budget", "zip_decay"):
            value = getattr(self, name)
            if value is not None and (not _real(value) or not 0.0 <= float(value) <= 1.0):
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        if not _real(self.holdout) or not 0.0 < float(self.holdout) < 1.0:
            raise ConfigError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.merge_layers is not None and (not _integer(self.merge_layers) or self.merge_layers < 0):
            raise ConfigError(f"merge_layers must be a non-negative integer, got {self.merge_layers}")
        for name in ("max_sweeps", "patience"):
            value = getattr(self, name)
            if not _integer(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not _real(self.tol) or not 0.0 <= float(self.tol) < 1.0:
            raise ConfigError(f"tol must be in [0, 1), got {self.tol}")
        for name in ("max_tokens_per_batch", "repair_tokens_per_batch", "statistics_samples", "repair_samples"):
            value = getattr(self, name)
            if value is not None and (not _integer(value) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        if self.residual_layers is not None:
            layers = self.residual_layers
            if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable) \
                    or not (layers := list(layers)) or not all(_integer(i) for i in layers):
                raise ConfigError("residual_layers must be a non-empty list of layer indices, "
                                  f"got {self.residual_layers!r}")
            object.__setattr__(self, "residual_layers", tuple(int(i) for i in layers))
        if self.unpaired_layers not in ("keep", "average"):
            raise ConfigError(f"unpaired_layers must be 'keep' or 'average', got '{self.unpaired_layers}'")
        # torch's generators take seeds below 2**64 only (a larger one would fail at the statistics pass)
        if not _integer(self.seed) or not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed must be an integer in [0, 2**64), got {self.seed}")
        for name in ("merge_layers", "max_sweeps", "patience", "max_tokens_per_batch", "statistics_samples",
                     "repair_samples", "repair_tokens_per_batch", "seed"):  # numpy numbers as Python ones (the recipe is JSON)
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("alpha", "zip_budget", "zip_decay", "holdout", "tol"):
            if type(getattr(self, name)) not in (int, float, type(None)):
                object.__setattr__(self, name, float(getattr(self, name)))
        if self.repair is not None:
            object.__setattr__(self, "repair", _repairs(self.repair))

    @property
    def preset(self) -> Preset:
        return PRESETS[self.method]

    @property
    def resolved_mode(self) -> Mode:
        return self.mode or self.preset.mode

    @property
    def resolved_alpha(self) -> float:
        return float(self.preset.alpha if self.alpha is None else self.alpha)

    @property
    def resolved_zip_budget(self) -> float:
        return float(self.preset.zip_budget if self.zip_budget is None else self.zip_budget)

    @property
    def resolved_zip_decay(self) -> float:
        return float(self.preset.zip_decay if self.zip_decay is None else self.zip_decay)

    @property
    def resolved_repair(self) -> tuple[str, ...]:
        return self.preset.repair if self.repair is None else self.repair

    @property
    def needs_data(self) -> bool:
        """Whether the solve uses calibration data (any activation term, or scoring candidates)."""
        return self.method == "auto" or (self.preset.match and self.resolved_alpha < 1.0)

    @property
    def uses_data(self) -> bool:
        """Whether the merge uses calibration data at all (the solve, or a repair)."""
        return self.needs_data or bool(self.resolved_repair)

    def check_depth(self, num_layers: int) -> None:
        """Refuse ``merge_layers`` or ``residual_layers`` beyond the model's depth."""
        if self.merge_layers is not None and self.merge_layers > num_layers:
            raise ConfigError(f"merge_layers={self.merge_layers} exceeds the parents' {num_layers} layers")
        bad = [i for i in self.residual_layers or () if not 0 <= i <= num_layers]
        if bad:
            raise ConfigError(f"residual_layers {bad} outside [0, {num_layers}] (layer inputs, then the last output)")

    def statistics_changes(self, other: "MergeConfig") -> list[str]:
        """The :data:`STATISTICS_FIELDS` in which this recipe differs from ``other``: statistics
        collected with one do not serve the other."""
        return [f for f in STATISTICS_FIELDS if getattr(self, f) != getattr(other, f)]

    def with_updates(self, **changes: Any) -> "MergeConfig":
        """A validated copy with some fields changed (for a cheap re-solve)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update({name: getattr(self, name) for name in RESOLVED})
        if self.residual_layers is not None:
            data["residual_layers"] = list(self.residual_layers)
        data["repair"] = None if self.repair is None else list(self.repair)
        data["resolved_repair"] = list(self.resolved_repair)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MergeConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - set(RESOLVED)
        if unknown:
            raise ConfigError(f"unknown merge settings: {', '.join(sorted(unknown))}")
        settings = {k: v for k, v in data.items() if k in known}
        settings.setdefault("repair", ())  # a recipe saved before repairs existed was not repaired
        settings.setdefault("statistics_samples", None)  # nor did its statistics stop short of the data
        # and its repairs took the statistics' token cap
        settings.setdefault("repair_tokens_per_batch", settings.get("max_tokens_per_batch", cls.max_tokens_per_batch))
        return cls(**settings)

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder, RECIPE_NAME).write_text(json.dumps({"config": self.to_dict()}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "MergeConfig":
        path = Path(folder, RECIPE_NAME)
        try:
            return cls.from_dict(json.loads(path.read_text())["config"])
        except (OSError, KeyError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read a merge recipe from {path}: {err}") from None


def _repairs(value: Any) -> tuple[str, ...]:
    """Repair names as a tuple in run order (a comma-separated string is accepted; ``"none"`` or
    an empty list: no repair)."""
    if not isinstance(value, (str, list, tuple)):
        raise ConfigError(f"repair must be a list of names or a comma-separated string, got {value!r}")
    names = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else list(value)
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in REPAIRS]
    if unknown:
        raise ConfigError(f"unknown repair {', '.join(map(repr, unknown))}; choose from: {', '.join(REPAIRS)}")
    return tuple(n for n in REPAIRS if n in names)


def _integer(value: Any) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    """A finite real number (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

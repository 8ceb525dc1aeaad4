"""MuDSCMerger and MergeResult: the only place that knows the order of the stages
(load -> statistics -> similarity -> solve -> apply -> write)."""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from .apply import MergedWeights, apply_transforms, build_task_model, is_merged
from .config import RECIPE_NAME, RESOLVED, MergeConfig
from .data import Calibration, calibration, text_length
from .hetero import depth as hetero_depth
from .hetero.width import differ_in_width, merged_config, widen_heads
from .io.writer import atomic_output_dir
from .loading import Parent, check_compatible, load_parent, non_finite
from .output import card_name, write_merge_folder
from .repair import apply_repairs
from .repair.recorded import ParentOutputs
from .select import choose
from .similarity import WeightSimilarity
from .solve.descent import SolveSettings, coordinate_descent, solve_units
from .solve.solution import MergedPairs
from .statistics import (
    MergeQualityWarning,
    SymmetricBlocks,
    calibration_issues,
    collect_statistics,
    distinct_inputs,
    plan_space_groups,
)
from .transforms import TRANSFORMS_NAME, SpaceTransform, Transforms, identity_transforms, load_transforms
from .unitmaps.spaces import UnitMap


class MuDSCMerger:
    """Merges parents of one family into one model (see DESIGN.md).

    >>> merger = MuDSCMerger.from_pretrained(["org/vit-a", "org/vit-b"], method="mudsc", alpha=0.5)
    >>> result = merger.merge(dataset, num_samples=256)
    >>> result.save_pretrained("merged/")
    """

    def __init__(self, parents: Sequence[Parent], config: MergeConfig) -> None:
        check_compatible(parents)
        config.check_depth(max(p.unit_map.num_layers for p in parents))
        self.parents = list(parents)
        self.config = config
        self.depth: hetero_depth.DepthPlan | None = None  # set once parents of different depths are aligned
        self._merging = self.parents  # the parents as merged: a shallower one expanded to the deep depth
        _check_partial(config, self.unit_maps)
        self.calibration: dict[str, Any] | None = None
        self._activation: dict[str, SymmetricBlocks] | None = None
        self._heldout: Calibration | None = None
        self._statistics_config: MergeConfig | None = None  # the recipe the statistics were collected with
        self._calibration_source: Calibration | None = None  # the fit part, which the repairs stream again
        self._fit_batches: tuple[Calibration, int | None, list[dict[str, torch.Tensor]]] | None = None  # prepared once
        self._recorded: ParentOutputs | None = None  # the parents' outputs for the repairs, from the statistics pass

    @classmethod
    def from_pretrained(
        cls,
        models: Sequence[str | Path | Any],
        method: str = "mudsc",
        *,
        revision: str | Sequence[str | None] | None = None,
        token: str | bool | None = None,
        device_map: Any = None,
        torch_dtype: Any = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        model_class: str | type | Sequence[str | type | None] | None = None,
        **config: Any,
    ) -> "MuDSCMerger":
        """Load the parents (Hub ids, local folders or loaded models) and validate the recipe.

        ``config`` takes every :class:`MergeConfig` field (``mode``, ``alpha``, ``merge_layers``,
        ``zip_budget``, ``zip_decay``, ``seed``, ...). The recipe is validated before anything loads.
        ``revision`` and ``model_class`` (the transformers class to load a parent as, default the
        one its config names; ``"BertModel"`` merges classifiers' encoders) take one value for all
        parents or one per parent.
        """
        merge_config = MergeConfig(method=method, **config)
        revisions, classes = (list(v) if isinstance(v, (list, tuple)) else [v] * len(models)
                              for v in (revision, model_class))
        for what, values in (("revision", revisions), ("model_class", classes)):
            if len(values) != len(models):
                raise ValueError(f"{what} gives {len(values)} values for {len(models)} parents: give one, or one "
                                 "per parent")
        parents = [load_parent(m, revision=r, token=token, device_map=device_map, torch_dtype=torch_dtype,
                               trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, model_class=c)
                   for m, r, c in zip(_copies_for_repeats(models), revisions, classes)]
        return cls(parents, merge_config)

    @property
    def unit_maps(self) -> list[UnitMap]:
        """The unit maps of the parents as merged (of one depth once the layers are aligned)."""
        return [p.unit_map for p in self._merging]

    @property
    def differ_in_depth(self) -> bool:
        return len({p.unit_map.num_layers for p in self.parents}) > 1

    def merged_spaces(self, config: MergeConfig | None = None) -> list[str]:
        """Names of the spaces that a merge with ``config`` merges (and solves: not those of a
        deeper parent's layers without a partner, which it merges alone)."""
        config = config or self.config
        self._require_alignment()
        umap = self.unit_maps[0]
        depth = umap.num_layers if config.merge_layers is None else config.merge_layers
        alone = set(hetero_depth.unpaired_spaces(umap, self.depth)) if self.depth else set()
        return [s.name for s in umap.spaces if is_merged(s.layer, depth, umap.num_layers) and s.name not in alone]

    def align(self, layer_map: Sequence[int] | None = None, cka: np.ndarray | None = None) -> None:
        """Align parents of different depths: ``layer_map[s]`` is the deep layer partnered with
        layer ``s`` of the shallower parent (default: the map of maximal summed ``cka``, which
        :meth:`collect` measures on the calibration data)."""
        if not self.differ_in_depth:
            raise ValueError("the parents have one depth: there are no layers to align")
        plan = hetero_depth.plan_depth(self.parents, cka, layer_map)
        hetero_depth.check_plan(self.parents[0].unit_map.family, plan, self.config.merge_layers,
                                self.config.unpaired_layers)
        if self.depth is not None and (plan.deep, plan.layer_map) == (self.depth.deep, self.depth.layer_map):
            return  # the alignment the parents have: their statistics still fit
        if self._activation is not None:
            warnings.warn("align() changed the layer alignment that the statistics were collected with: they are "
                          "dropped; pass the calibration data again (merge(data) or collect(data))", stacklevel=2)
        self.depth = plan
        self._merging = [hetero_depth.expand_parent(p, plan) if i == plan.shallow else p
                         for i, p in enumerate(self.parents)]
        self._activation = None  # statistics of the parents otherwise aligned do not fit

    def _align_on(self, calib: Calibration, config: MergeConfig, progress: bool, accelerator: Any = None) -> None:
        """Align the layers of parents of different depths on all of ``calib`` (layer CKA), unless
        aligned; with several processes, the main one measures and every rank takes its alignment."""
        if not self.differ_in_depth or self.depth is not None:
            return
        several = accelerator is not None and accelerator.num_processes > 1
        cka = None
        if not several or accelerator.is_main_process:
            cka = hetero_depth.collect_layer_cka(
                [p.model for p in self.parents], [p.unit_map for p in self.parents], calib,
                max_tokens_per_batch=config.max_tokens_per_batch, seed=config.seed, progress=progress)
        if several:
            cka = broadcast_object_list([cka])[0]
        self.align(cka=cka)

    def _require_alignment(self) -> None:
        if self.differ_in_depth and self.depth is None:
            depths = [p.unit_map.num_layers for p in self.parents]
            raise ValueError(f"parents of different depths ({depths} layers) are aligned on calibration data: "
                             "call merge(data) or collect(data) first, or align(layer_map=...)")

    # -- statistics -------------------------------------------------------------------
    def collect(
        self,
        data: Any,
        *,
        num_samples: int | None = None,
        batch_size: int = 16,
        column: str | Sequence[str] | None = None,
        accelerator: Any = None,
        progress: bool = True,
        memory_budget_gb: float | None = None,
        holdout: float | None = None,
    ) -> None:
        """Stream calibration data through every parent and keep each merged space's activation
        correlation (all that a later :meth:`solve` needs from the data).

        ``data``: see :func:`hf_mudsc.data.calibration`; a seeded random draw of ``num_samples`` rows
        (the seed of the recipe; default 256, or every row of a smaller dataset), recorded in
        :attr:`calibration`, in batches of ``batch_size`` rows (texts: grouped by length, about
        ``batch_size`` times the mean length in tokens per batch).
        One pass, or several when the float64 accumulators of all spaces would exceed
        ``memory_budget_gb``: spaces are then collected in groups that fit, one pass per group.
        ``holdout``: the fraction of the drawn rows kept out of the statistics, to score candidates
        on (``method="auto"``).
        """
        self._collect(self.config, data, num_samples=num_samples, batch_size=batch_size, column=column,
                      accelerator=accelerator, progress=progress, memory_budget_gb=memory_budget_gb,
                      holdout=holdout)

    def prepare_calibration(self, data: Any, *, num_samples: int | None = None, batch_size: int = 16,
                            column: str | Sequence[str] | None = None, seed: int | None = None) -> Calibration:
        """The calibration rows that :meth:`collect` draws from ``data`` (``seed``: the recipe's by
        default), prepared by the parents' tokenizer or image processor. Split it with
        :meth:`Calibration.split` and give a part to :meth:`collect` or :meth:`merge`."""
        processor = next((p.processor for p in self.parents if p.processor is not None), None)
        models = [p.model for p in self.parents]
        return calibration(data, processor, self.parents[0].modality, num_samples=num_samples, batch_size=batch_size,
                           column=column, seed=self.config.seed if seed is None else seed,
                           max_length=text_length(processor, models),
                           channels=getattr(models[0].config, "num_channels", None))

    def _collect(self, config: MergeConfig, data: Any, *, num_samples: int | None, batch_size: int,
                 column: str | Sequence[str] | None, accelerator: Any, progress: bool,
                 memory_budget_gb: float | None = None, holdout: float | None = None) -> None:
        """:meth:`collect` with the statistics settings of ``config``."""
        first = self.parents[0]
        calib = self.prepare_calibration(data, num_samples=num_samples, batch_size=batch_size, column=column,
                                         seed=config.seed)
        self._heldout = None
        if holdout is not None:  # method="auto": a part the statistics never see scores the candidates
            calib, self._heldout = calib.split(holdout)
        # the statistics read the first statistics_samples drawn rows, the repairs the first repair_samples:
        # each head batched apart from the rest, so that the batches of the shorter are the longer's first
        heads = {n for n in (config.statistics_samples, config.repair_samples) if n is not None}
        calib = dataclasses.replace(calib, apart=tuple(sorted(heads)))
        self._calibration_source = calib  # every row, in every process: the repairs run alike in each
        stats = calib if config.statistics_samples is None else calib.head(config.statistics_samples)
        self._align_on(stats, config, progress, accelerator)  # on every row, before they are shared out
        distinct = distinct_inputs(stats)
        if accelerator is not None and accelerator.num_processes > 1:
            stats = dataclasses.replace(stats, rank=accelerator.process_index, world_size=accelerator.num_processes)
        maps = [_residual_sites(m, config.residual_layers) for m in self.unit_maps]
        merged = self.merged_spaces(config)
        groups = [merged]
        if memory_budget_gb is not None:
            planned = plan_space_groups(maps, int(memory_budget_gb * 2**30))
            groups = [g for g in ([n for n in group if n in merged] for group in planned) if g]
        # accumulate where the first parent runs (float64 on a GPU beats a copy to the CPU per hook)
        stats_device = next(first.model.parameters()).device
        models = [p.model for p in self._merging]
        # the parents' outputs that the repairs would compute on these batches (on the first repair_samples
        # rows only, where the repairs read fewer than the statistics), kept from the first pass
        self._recorded = None
        if config.resolved_repair and (accelerator is None or accelerator.num_processes == 1) \
                and ParentOutputs.usable(models):
            self._recorded = ParentOutputs(models, self.unit_maps[0], config.seed, config.repair_tokens_per_batch,
                                           rows=config.repair_samples)
        moments = {}
        for k, group in enumerate(groups):
            with self._recorded.recording() if self._recorded is not None and k == 0 else nullcontext() as record:
                moments.update(collect_statistics(models, maps, stats, spaces=group, seed=config.seed,
                                                  stats_device=stats_device,
                                                  max_tokens_per_batch=config.max_tokens_per_batch,
                                                  progress=progress, accelerator=accelerator, before_batch=record))
        samples = {name: m.n for name, m in moments.items()}
        if not samples or min(samples.values()) == 0:
            raise ValueError("the calibration data gave no samples (all padding, or empty batches)")
        # one space at a time, so that the sums and the correlations are never all in memory at once;
        # float32 correlations (half the memory; far below the sampling noise), their upper blocks only,
        # kept on disk: the solves map them in, and the apply and the repairs run without them
        self._activation = {}
        for name in list(moments):
            self._activation[name] = moments.pop(name).correlation(torch.float32)
            self._activation[name].to_disk()
        self._statistics_config = config
        self.calibration = {**calib.describe(), "samples_per_space": samples}
        read = stats.describe()["num_samples"]
        if read < self.calibration["num_samples"]:
            self.calibration["statistics_samples"] = read
        if self._heldout is not None:
            self.calibration["heldout"] = self._heldout.describe()["part"]
        if accelerator is None or accelerator.is_main_process:  # every rank holds the same totals
            told = self._warn(calibration_issues(samples, self.unit_maps, self._activation), distinct)
            if told:  # the model card and the recipe keep them
                self.calibration["warnings"] = told

    def _warn(self, issues: dict[str, list[dict[str, Any]]], distinct: tuple[int, int]) -> list[str]:
        """One :class:`MergeQualityWarning` per kind of issue found in the statistics, and one when
        half the samples or more repeat others (``distinct``: distinct samples, samples); returns
        the messages."""
        messages = []
        if 2 * distinct[0] <= distinct[1]:
            messages.append(f"the calibration data holds {distinct[0]} distinct input{'s' * (distinct[0] != 1)} "
                            f"among its {distinct[1]} samples (repeated rows, empty texts, or images that came out "
                            "alike, e.g. 16-bit images saturated to white): the statistics and the repairs see only "
                            "those; give varied calibration data")
        few = [f"'{i['space']}' has {i['samples']} sample{'s' * (i['samples'] != 1)} for {i['units']} units"
               for i in sorted(issues["few_samples"], key=lambda i: i["samples"] / i["units"])]  # worst first
        if few:
            capped = "statistics_samples" in self.calibration  # the cap left samples out
            messages.append(f"too little calibration data: {_listed(few)}; the activation correlations of these "
                            "spaces are poorly determined and the merge may be poor: give more calibration data "
                            "(num_samples / --num-samples" + (", and statistics_samples / --statistics-samples, "
                                                              "which the statistics read" if capped else "") + ")")
        names = [p.name for p in self.parents]
        constant = [f"'{i['space']}' " + ", ".join(f"{c} of {d} units of '{n}'"
                                                  for c, d, n in zip(i["constant"], i["units"], names) if c)
                    for i in sorted(issues["constant"], key=lambda i: -sum(i["constant"]) / sum(i["units"]))]
        if constant:
            messages.append(f"units with constant activations on the calibration data: {_listed(constant)}; their "
                            "activation similarity is 0, so they are matched by their weights alone or arbitrarily "
                            "(dead units, zeroed layers, or too few or too uniform examples)")
        for message in messages:
            warnings.warn(message, MergeQualityWarning, stacklevel=_caller_level())
        return messages

    # -- solve ------------------------------------------------------------------------
    def solve(self, progress: bool = True, *, config: MergeConfig | None = None,
              **overrides: Any) -> tuple[Transforms, list[dict[str, Any]]]:
        """Transforms of every merged space, and per-space diagnostics.

        ``overrides`` change the recipe for this solve only (e.g. ``alpha``, ``zip_decay``), or
        ``config`` replaces it: a re-solve reuses the collected statistics.
        """
        try:
            return self._solve(progress, config or self.config, overrides)
        finally:  # the kept correlations' pages leave the process until the next solve reads them
            for correlation in (self._activation or {}).values():
                correlation.release()

    def _solve(self, progress: bool, config: MergeConfig,
               overrides: dict[str, Any]) -> tuple[Transforms, list[dict[str, Any]]]:
        if overrides:
            config = config.with_updates(**overrides)
        if config.method == "auto":
            raise ValueError("method 'auto' solves several candidates: call merge(data) (or pick a method to solve)")
        names = self.merged_spaces(config)
        maps = self.unit_maps
        sizes = {n: [m[n].dim for m in maps] for n in names}
        alone = hetero_depth.unpaired_transforms(maps, self.depth) if self.depth else {}
        if not config.preset.match:
            identity = {**identity_transforms(maps), **alone}
            return identity, self._diagnostics(identity, names)
        if config.needs_data and self._activation is None:
            raise ValueError(f"method '{config.method}' with alpha={config.resolved_alpha} needs calibration data: "
                             "call merge(data) or collect(data) first, or use alpha=1 (weight matching)")
        if config.needs_data:
            self._check_statistics(config, names)
        settings = SolveSettings.from_config(config)
        units = solve_units([maps[0][n] for n in names])
        weight_sim = None
        if config.resolved_alpha > 0:
            weight_sim = WeightSimilarity(maps, [_params(p.model) for p in self._merging],
                                          within=settings.reads_within(len(maps)))
        activation = None if config.resolved_alpha == 1 else self._activation
        total = len(units) * (1 + (config.max_sweeps if 0 < config.resolved_alpha else 0))
        with tqdm(total=total, desc="solving", unit="space", disable=not progress) as bar:
            result = coordinate_descent(units, sizes, settings, activation, weight_sim,
                                        {n: SpaceTransform.identity(sizes[n]) for n in names},
                                        progress=lambda _: bar.update(1))
        transforms = {**result.transforms, **alone}
        return transforms, self._diagnostics(transforms, names, result.objectives, result.weight_objectives)

    def _check_statistics(self, config: MergeConfig, names: list[str]) -> None:
        """Refuse a recipe whose statistics differ from the collected ones (other statistics
        settings, or spaces that were not collected): a solve would silently use the old ones."""
        used = self._statistics_config
        changed = config.statistics_changes(used)
        if changed:
            now = ", ".join(f"{f}={getattr(config, f)!r}" for f in changed)
            before = ", ".join(f"{f}={getattr(used, f)!r}" for f in changed)
            raise ValueError(f"{now} changes the activation statistics, which were collected with {before}: "
                             "pass the calibration data again (merge(data, ...)) to collect them anew")
        missing = [n for n in names if n not in self._activation]
        if missing:
            raise ValueError(f"merge_layers={config.merge_layers} merges {len(missing)} spaces without statistics "
                             f"(e.g. '{missing[0]}'; they were collected for merge_layers={used.merge_layers}): "
                             "pass the calibration data again (merge(data, ...)) to collect them")

    def _diagnostics(self, transforms: Transforms, names: list[str], objectives: dict[str, float] | None = None,
                     weight_objectives: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Per space: merged units, the descent's objective and weight-similarity objective (when it
        computed them), and the activation-similarity objective (when there are statistics)."""
        rows = []
        for name in names:
            row: dict[str, Any] = {"space": name, "units": transforms[name].k}
            if objectives and name in objectives:
                row["objective"] = round(objectives[name], 4)
            if self._activation is not None and name in self._activation:
                pairs = MergedPairs(np.concatenate([a.numpy() for a in transforms[name].assign]))
                row["activation_similarity"] = round(pairs.objective(self._activation[name]), 4)
            if weight_objectives and name in weight_objectives:
                row["weight_similarity"] = round(weight_objectives[name], 4)
            rows.append(row)
        return rows

    # -- all stages ---------------------------------------------------------------------
    def merge(
        self,
        data: Any = None,
        *,
        num_samples: int | None = None,
        batch_size: int = 16,
        column: str | Sequence[str] | None = None,
        accelerator: Any = None,
        progress: bool = True,
        **overrides: Any,
    ) -> "MergeResult":
        """Collect statistics (when the method uses data), solve, apply, and repair (``config.resolved_repair``);
        with ``method="auto"``, solve, apply, repair and score every candidate (:mod:`hf_mudsc.select`).

        Given ``data``, the statistics are collected (again) with this merge's recipe; without it, a
        merge reuses those of the last :meth:`collect` or ``merge(data)``, and refuses ``overrides``
        that would change them (``residual_layers``, ``max_tokens_per_batch``, ``statistics_samples``,
        ``seed``, more merged layers).
        """
        config = self.config.with_updates(**overrides) if overrides else self.config
        auto = config.method == "auto"
        if data is None and num_samples is not None:
            raise ValueError("num_samples counts the rows drawn from the data given with it: pass merge(data, "
                             "num_samples=...), or leave it out to reuse the collected data")
        if config.needs_data and (data is not None or self._activation is None or (auto and self._heldout is None)):
            if data is None and auto and self._activation is not None:
                raise ValueError("method 'auto' scores its candidates on calibration rows held out of the statistics, "
                                 "which collect() kept none of: call merge(data, method='auto') or "
                                 "collect(data, holdout=0.25) first")
            if data is None:
                raise ValueError(f"method '{config.method}' needs calibration data (or use method='weight-matching')")
            self._collect(config, data, num_samples=num_samples, batch_size=batch_size, column=column,
                          accelerator=accelerator, progress=progress, holdout=config.holdout if auto else None)
        elif config.resolved_repair and (data is not None or self._calibration_source is None):
            if data is None:
                raise ValueError(f"repair {', '.join(config.resolved_repair)} needs calibration data: give merge(data)")
            self._calibration_source = self.prepare_calibration(data, num_samples=num_samples, batch_size=batch_size,
                                                                column=column, seed=config.seed)
            self._recorded = None
            self.calibration = self._calibration_source.describe()
            self._align_on(self._calibration_source, config, progress, accelerator)
        elif data is not None:  # a data-free method: the data aligns parents of different depths
            self._align_on(self.prepare_calibration(data, num_samples=num_samples, batch_size=batch_size,
                                                    column=column, seed=config.seed), config, progress, accelerator)
        elif config.resolved_repair and self._calibration_source.column is not None \
                and self._calibration_source.seed != config.seed:  # drawn rows, not ready batches
            raise ValueError(f"seed={config.seed} would draw other calibration rows than the collected ones (seed "
                             f"{self._calibration_source.seed}), which the repairs read: pass the data again "
                             "(merge(data, ...))")
        if auto:
            return choose(self, config, self._heldout, progress=progress)
        transforms, report = self.solve(progress=progress, config=config)
        return self.apply(transforms, config, report, progress=progress)

    def apply(self, transforms: Transforms, config: MergeConfig | None = None,
              report: list[dict[str, Any]] | None = None, progress: bool = False) -> "MergeResult":
        """Build the merged task models and the joint model from transforms, then run the
        repairs of ``config.resolved_repair`` on the calibration data given to :meth:`collect` or :meth:`merge`."""
        config = config or self.config
        if config.resolved_repair and self._calibration_source is None:
            raise ValueError(f"repair {', '.join(config.resolved_repair)} needs calibration data: call merge(data) "
                             "or collect(data) first")
        self._require_alignment()
        _check_partial(config, self.unit_maps)
        maps, plan = self.unit_maps, self.depth
        if plan is not None:
            hetero_depth.check_plan(maps[0].family, plan, config.merge_layers, config.unpaired_layers)
        alone = hetero_depth.alone_params(maps, plan, config.unpaired_layers) if plan else None
        weights = apply_transforms(maps, [_params(p.model) for p in self._merging], transforms,
                                   config.merge_layers, alone)
        if plan is not None and any(weights.private):  # the shallow parent's own copy of unpaired layers
            weights.private[plan.shallow] = hetero_depth.identity_private(
                weights.private[plan.shallow], weights.private[plan.deep], plan, maps[plan.deep])
        if differ_in_width(maps):  # a head whose inner width is the hidden size (RoBERTa) widens with it
            widen_heads(weights, [p.model for p in self._merging], maps, transforms)
        repairs = []
        if config.resolved_repair:
            models = [p.model for p in self._merging]
            if models[0].dtype in (torch.float16, torch.bfloat16):  # their outputs' rounding would be fitted
                models = [copy.deepcopy(m).float() for m in models]  # float32 copies: the fits are float32's
            repairs = apply_repairs(config.resolved_repair, models, maps, transforms,
                                    weights, self._repair_batches(config.repair_samples), seed=config.seed,
                                    max_tokens_per_batch=config.repair_tokens_per_batch, alone=alone,
                                    recorded=self._recorded,
                                    progress=progress)
        _check_finite_weights(weights, config)
        return MergeResult(self._merging, config, transforms, weights, report or [],
                           self.calibration if config.uses_data else None, repairs=repairs, depth=plan)


    def _repair_batches(self, limit: int | None) -> list[dict[str, torch.Tensor]]:
        """The first ``limit`` drawn samples (``None``: all) of the fit part, in batches, prepared
        (tokenized, processed) once for every repaired apply of this calibration and limit
        (``method="auto"`` applies each candidate). Ready batches keep their order, so theirs are
        the first batches; rows are drawn first, then batched (texts by length)."""
        source = self._calibration_source
        if self._fit_batches is None or self._fit_batches[0] is not source or self._fit_batches[1] != limit:
            self._fit_batches = (source, limit, list(source if limit is None else source.head(limit)))
        return self._fit_batches[2]


def _check_finite_weights(weights: MergedWeights, config: MergeConfig) -> None:
    """Refuse a merge whose weights hold NaN or infinite values (the parents' are checked when loaded:
    degenerate calibration data can drive the repairs there, or a half-precision sum overflow)."""
    bad = non_finite(item for part in (weights.shared, *weights.private) for item in part.items())
    if bad is not None:
        repaired = f" after the repairs ({', '.join(config.resolved_repair)}): give more varied calibration " \
            "data, or repair='none' (--repair none)" if config.resolved_repair else ""
        raise ValueError(f"the merge gave NaN or infinite values in '{bad}'{repaired}")


def _copies_for_repeats(models: Sequence[Any]) -> list[Any]:
    """The parents, a loaded model given more than once copied for each repeat: every pass hooks
    each parent's modules, and one object in two places would be observed twice per batch."""
    seen: set[int] = set()
    out = []
    for m in models:
        out.append(copy.deepcopy(m) if isinstance(m, torch.nn.Module) and id(m) in seen else m)
        seen.add(id(m))
    return out


class MergeResult:
    """The outcome of a merge: one standard model per parent, the joint model, the report."""

    def __init__(self, parents: Sequence[Parent], config: MergeConfig, transforms: Transforms,
                 weights: MergedWeights, report: list[dict[str, Any]], calibration: dict[str, Any] | None,
                 repairs: list[dict[str, Any]] | None = None, depth: hetero_depth.DepthPlan | None = None) -> None:
        self.parents = list(parents)
        self.depth = depth
        self.config = config
        self.transforms = transforms
        self.weights = weights
        self.report = report
        self.calibration = calibration
        self.selection: list[dict[str, Any]] | None = None  # method="auto": every candidate's score
        self.repairs = repairs or []  # one row per repair run (repair, seconds, what it changed)
        self._task_models: list[torch.nn.Module] | None = None
        self._model = None

    @property
    def task_models(self) -> list[torch.nn.Module]:
        """Parent i's task in the merged model, as a standard model of the parent's class."""
        if self._task_models is None:
            umap = self.parents[0].unit_map  # every parent has the merged depth by now
            self._task_models = [build_task_model(p.model, self.weights.task_state_dict(i),
                                                  merged_config(p.model.config, self.transforms, umap))
                                 for i, p in enumerate(self.parents)]
        return self._task_models

    @property
    def has_heads(self) -> bool:
        """Whether the parents carry task heads (a classifier), not only the base model."""
        first = self.parents[0].model
        return first.base_model is not first

    @property
    def forms_joint(self) -> bool:
        """Whether the parents' heads form a joint model: single-label classification heads, every one
        (not extractive QA, regression or multi-label outputs)."""
        from .joint_model import serves_joint

        return self.has_heads and all(serves_joint(p.model) for p in self.parents)

    @property
    def model(self):
        """The merged model: the joint multi-task model (shared trunk, per-task tails and heads)
        when the parents have single-label classification heads; the merged base model itself when they
        have none. Other heads (extractive QA, regression, multi-label) have their task models only."""
        if self._model is None:
            if self.has_heads and not self.forms_joint:
                raise ValueError("these heads (extractive QA, regression or multi-label) form no joint model: use "
                                 "result.task_models (tasks/<i>/ in the saved folder)")
            if not self.has_heads:
                if any(self.weights.private):
                    raise ValueError("a partial merge of models without task heads gives one model per parent, "
                                     "not one model: use result.task_models (tasks/<i>/ in the saved folder)")
                self._model = self.task_models[0]
            else:
                from .joint_model import MuDSCJointModel

                names = _distinct([card_name(p, self.parents) for p in self.parents])
                self._model = MuDSCJointModel.from_task_models(self.task_models, set(self.weights.shared), names)
        return self._model

    def recipe(self) -> dict[str, Any]:
        """What was merged and how: enough to re-apply the merge without the data (local parents by
        their absolute paths, so that a re-apply from any folder finds them)."""
        return {
            "hf_mudsc_version": _version(),
            "parents": [p.name if p.local_path is None else str(p.local_path) for p in self.parents],
            "parents_sha256": [p.sha256() for p in self.parents],  # what reapply checks
            # how reapply loads them again: the revisions, the dtype and the classes they were merged at
            "parents_revision": [p.revision for p in self.parents],
            "parents_dtype": str(self.parents[0].model.dtype).removeprefix("torch."),
            "parents_class": [type(p.model).__name__ for p in self.parents],  # as merged (a head may be left out)
            "config": self.config.to_dict(),
            "calibration": self.calibration,
            "report": self.report,
            **({"selection": self.selection} if self.selection else {}),
            "repairs": self.repairs,
            "layer_alignment": self.depth.to_dict() if self.depth else None,
        }

    def save_pretrained(self, out: str | Path, *, max_shard_size: str | int = "5GB", overwrite: bool = False,
                        evaluation: list[dict[str, Any]] | None = None) -> Path:
        """Write the merged folder (all or nothing; never over a parent's folder)."""
        protected = [p.local_path for p in self.parents if p.local_path is not None]
        with atomic_output_dir(out, overwrite=overwrite, protected=protected) as tmp:
            write_merge_folder(self, tmp, max_shard_size=max_shard_size, evaluation=evaluation)
        return Path(out)

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str | None = None, endpoint: str | None = None,
                    max_shard_size: str | int = "5GB") -> str:
        """Write the folder to a temporary place and upload it in one commit with its card."""
        import tempfile

        from .io.hub import push_folder

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "merged", max_shard_size=max_shard_size)
            return push_folder(folder, repo_id, token=token, private=private, endpoint=endpoint,
                               commit_message=commit_message or f"Merge with hf_mudsc ({self.config.method})")


def reapply(folder: str | Path, **load: Any) -> MergeResult:
    """Re-apply a saved merge (recipe + transforms) to its parents, without any data: loaded at the
    revisions, in the dtype and as the classes they were merged at, unless ``load``
    (``from_pretrained``'s loading arguments) says otherwise."""
    path = Path(folder, RECIPE_NAME)
    if not path.is_file() or not Path(folder, TRANSFORMS_NAME).is_file():
        raise ValueError(f"'{folder}' is not a merge folder: it needs {RECIPE_NAME} and {TRANSFORMS_NAME}")
    recipe = json.loads(path.read_text())
    config = MergeConfig.from_dict(recipe["config"])
    if config.resolved_repair:
        raise ValueError(f"'{folder}' was repaired after the merge ({', '.join(config.resolved_repair)}) on "
                         "calibration data, "
                         "which reapply cannot repeat: load the saved model itself, or merge again with data")
    recorded = {"revision": recipe.get("parents_revision"), "torch_dtype": recipe.get("parents_dtype"),
                "model_class": recipe.get("parents_class")}
    load = {**{k: v for k, v in recorded.items() if v is not None}, **load}
    merger = MuDSCMerger.from_pretrained(recipe["parents"], **load, **_config_kwargs(config))
    for i, (parent, digest) in enumerate(zip(merger.parents, recipe.get("parents_sha256") or ())):
        if digest is not None and parent.sha256() not in (None, digest):
            raise ValueError(f"parent {i} ('{parent.name}') is not the model that was merged: its weights differ from "
                             f"those the recipe records (changed since, changed in memory before the merge, or loaded "
                             "in another dtype); re-apply needs the same parents")
    if recipe.get("layer_alignment"):
        merger.align(recipe["layer_alignment"]["layer_map"])
    result = merger.apply(load_transforms(str(Path(folder, TRANSFORMS_NAME))), config, recipe.get("report"))
    result.calibration = recipe.get("calibration")
    result.selection = recipe.get("selection")  # an automatic choice's table, for the card
    return result


def _caller_level() -> int:
    """``stacklevel`` for a warning issued by this function's caller that points at the first frame
    outside hf_mudsc (the user's ``merge`` or ``collect`` call)."""
    package = str(Path(__file__).resolve().parent)
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _check_partial(config: MergeConfig, maps: Sequence[UnitMap]) -> None:
    """A partial merge keeps later layers per task in one config: it needs parents of one width."""
    if config.merge_layers is not None and config.merge_layers < maps[0].num_layers and differ_in_width(maps):
        raise ValueError("a partial merge (merge_layers) of parents of different widths is not supported: "
                         "their unmerged layers would need different widths in one config")


def _distinct(names: list[str]) -> list[str]:
    """Task names for the joint model (the cards' names of the parents: a Hub id, or a folder's own name,
    never a local path): a name given to several parents (two loaded models without a ``name_or_path``,
    one Hub id at two revisions, two folders of one name) gets the parent's index."""
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _listed(items: list[str], most: int = 4) -> str:
    """``items`` joined by '; ', the first ``most`` of them and a count of the rest."""
    shown = "; ".join(items[:most])
    return shown if len(items) <= most else f"{shown} (and {len(items) - most} more spaces)"


def _config_kwargs(config: MergeConfig) -> dict[str, Any]:
    data = config.to_dict()
    for key in RESOLVED:
        data.pop(key)
    return data


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _residual_sites(umap: UnitMap, layers: Sequence[int] | None) -> UnitMap:
    """The unit map with the residual stream observed only at the chosen layer inputs
    (index ``num_layers`` is the last layer's output)."""
    if layers is None:
        return umap
    spaces = [dataclasses.replace(s, sites=tuple(s.sites[i] for i in layers)) if s.name == "residual" else s
              for s in umap.spaces]
    return UnitMap(umap.family, umap.num_layers, spaces, umap.task_heads)


def _version() -> str:
    from . import __version__

    return __version__

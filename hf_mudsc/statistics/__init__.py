"""Streamed activation statistics of merge spaces (DESIGN.md §3.2).

``moments``: the running moments; ``symmetric``: the correlations as kept (upper blocks);
``collect``: the hooks and the pass; ``planning``: unit offsets and passes that fit a memory
budget; ``diagnostics``: what may make a merge poor; ``distributed``: the Accelerate reduction.
"""
from .collect import _Collector, collect_statistics
from ..quality import MergeQualityWarning
from .diagnostics import calibration_issues, distinct_inputs
from .distributed import reduce_moments
from .moments import Moments
from .planning import model_slices, plan_space_groups
from .symmetric import SymmetricBlocks

__all__ = [
    "MergeQualityWarning",
    "Moments",
    "SymmetricBlocks",
    "calibration_issues",
    "collect_statistics",
    "distinct_inputs",
    "model_slices",
    "plan_space_groups",
    "reduce_moments",
]

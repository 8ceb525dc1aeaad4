"""The warning every stage raises when a merge ran but its result may be poor."""
from __future__ import annotations


class MergeQualityWarning(UserWarning):
    """The merge ran, but its result may be poor (too little calibration data, units whose
    activations are constant, a zip that had to exceed a same-model budget, ...): the message
    says where and why."""

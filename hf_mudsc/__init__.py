"""hf_mudsc: merge Hugging Face models trained from different initialisations, without training."""
__version__ = "0.1.0"

from .config import MergeConfig, PRESETS  # noqa: E402
from .merger import MergeResult, MuDSCMerger, reapply  # noqa: E402
from .quality import MergeQualityWarning  # noqa: E402
from .unitmaps import register_unit_map, supported_model_types  # noqa: E402
from . import joint_model  # noqa: E402,F401  (registers the joint model with the Auto classes)

__all__ = ["MergeConfig", "MergeQualityWarning", "MergeResult", "MuDSCMerger", "PRESETS", "reapply",
           "register_unit_map", "supported_model_types"]

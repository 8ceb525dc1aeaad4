"""``hf-mudsc demo`` (:func:`run_demo`) and its parents (:mod:`hf_mudsc.demo.parents`)."""
from .run import run_demo

__all__ = ["run_demo"]

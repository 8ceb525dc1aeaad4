"""Whether a model or dataset name is a Hub id or a local path: one rule for the loaders, the
command line and the model card (which lists only Hub ids as ``base_model``)."""
from __future__ import annotations

from pathlib import Path


def could_be_hub_id(name: str) -> bool:
    """Whether ``name`` can only be a Hub id (``repo`` or ``org/repo``), not a local path:
    nothing exists at it, and it has no path shape (``./``, ``/``, ``~``, backslashes, deeper nesting)."""
    return (not Path(name).expanduser().exists() and name.count("/") <= 1 and "\\" not in name
            and not name.startswith((".", "/", "~")))

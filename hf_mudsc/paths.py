"""Whether a model or dataset name is a Hub id or a local path: one rule for the loaders, the
command line and the model card (which lists only Hub ids as ``base_model``)."""
from __future__ import annotations

import re
from pathlib import Path

_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # the characters a Hub repo id may hold: no spaces


def could_be_hub_id(name: str) -> bool:
    """Whether ``name`` can only be a Hub id (``repo`` or ``org/repo``), not a local path:
    nothing exists at it, it has no path shape (``./``, ``/``, ``~``, backslashes, deeper nesting), and
    it holds only the characters of a repo id."""
    return (not Path(name).expanduser().exists() and _REPO_ID.fullmatch(name) is not None
            and not name.startswith((".", "/", "~")))

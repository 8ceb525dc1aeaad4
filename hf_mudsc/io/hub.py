"""Publish a written merge folder to the Hugging Face Hub in one commit, card included.

huggingface_hub 2.4 notes: ``upload_folder`` sends README.md to ``/api/validate-yaml`` first, asks
``/api/{type}s/{repo}/preupload/{rev}`` how to send each file ("regular": inline base64 in the
commit, "lfs": through Xet/LFS storage), then POSTs one ndjson commit. With ``hf_xet`` installed it
uses a streamed pipeline that would split folders of more than ~250 files (or >100 MB of inline
files) into several commits; merge folders are far below that, so the card lands with the weights.
``endpoint=None`` means ``huggingface_hub.constants.ENDPOINT``, read from ``HF_ENDPOINT`` at import.
"""
from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

from huggingface_hub import HfApi

from .writer import OutputError, assert_no_pickle

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload merged model (hf-mudsc)"
# a push replaces the repo's top-level weights and its task folders (what a merge folder's models are
# loaded from); other files stay
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth")


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder; save the merge first (result.save_pretrained)")
    if not (folder / "README.md").is_file():
        raise OutputError(f"{folder} has no README.md; save it with save_pretrained so the card goes with the weights")
    assert_no_pickle(folder)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    exist_ok: bool = True,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (README.md included) in one commit, which
    also deletes the repo's top-level weights (:data:`WEIGHT_SUFFIXES`) and ``tasks/`` files that the
    folder does not hold (an earlier merge's shards or task folders, which a loader would otherwise
    read beside the new ones).

    ``revision``: a branch, created from the default branch if missing. Returns the commit URL.
    """
    folder = Path(folder).expanduser().resolve()
    _check_folder(folder)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=exist_ok)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        logger.info("uploading %s to %s on %s", folder, repo_id, api.endpoint)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            delete_patterns=_stale(api, repo_id, revision, folder) or None,
        )
    except _transport_errors() as err:  # no answer at all (the Hub's own answers are HfHubHTTPError, an OSError)
        raise ConnectionError(f"cannot reach the Hub at {api.endpoint}: {err}") from err
    return info.commit_url


def _stale(api: HfApi, repo_id: str, revision: str | None, folder: Path) -> list[str]:
    """The repo's top-level weight files and task-folder files that ``folder`` does not hold, as
    patterns that match each path alone."""
    ours = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    stale = [f for f in api.list_repo_files(repo_id, revision=revision)
             if f not in ours and (f.startswith("tasks/") or ("/" not in f and f.endswith(WEIGHT_SUFFIXES)))]
    return [re.sub(r"([*?\[])", r"[\1]", f) for f in stale]  # fnmatch: a bracketed character is itself


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The network failures (refused, timed out, DNS) of the HTTP client huggingface_hub uses: httpx2
    from huggingface_hub 2, httpx before."""
    for name in ("httpx2", "httpx"):
        try:
            return (importlib.import_module(name).TransportError,)
        except (ImportError, AttributeError):
            continue
    return ()

"""The output side: all-or-nothing folders, safetensors shards, the model card, the Hub push."""
from .card import build_model_card, cited_papers, scrub_secrets
from .hub import push_folder
from .writer import (
    CheckpointError,
    OutputError,
    assert_no_pickle,
    atomic_output_dir,
    check_output_dir,
    load_safetensors_folder,
    save_safetensors_sharded,
)

__all__ = [
    "CheckpointError",
    "OutputError",
    "assert_no_pickle",
    "atomic_output_dir",
    "check_output_dir",
    "build_model_card",
    "cited_papers",
    "load_safetensors_folder",
    "push_folder",
    "save_safetensors_sharded",
    "scrub_secrets",
]

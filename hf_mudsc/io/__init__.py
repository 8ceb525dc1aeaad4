"""The output side: all-or-nothing folders, the model card, the Hub push (weights and shards are
written by transformers' ``save_pretrained``)."""
from .card import build_model_card, cited_papers, scrub_secrets
from .hub import push_folder
from .writer import (
    OutputError,
    assert_no_pickle,
    atomic_output_dir,
    check_output_dir,
)

__all__ = [
    "OutputError",
    "assert_no_pickle",
    "atomic_output_dir",
    "check_output_dir",
    "build_model_card",
    "cited_papers",
    "push_folder",
    "scrub_secrets",
]

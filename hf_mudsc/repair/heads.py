"""``heads``: each task's head refit to its parent's outputs (label-free).

Every linear map of task ``i``'s head (``classifier.*``; RoBERTa's two-layer head map by map) is
re-solved by ridge regression of parent ``i``'s outputs of that map on the merged task model's
inputs to it (the pooler output for BERT, the final-norm CLS token for ViT, every real token for
token classification), pulled towards the merged head (:mod:`.ridge`). When the trunk equals the
parent's up to a permutation, the merged head fits exactly and is returned unchanged.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .context import RepairContext
from .least_squares import refit_linears


def repair_heads(ctx: RepairContext) -> dict[str, object]:
    """Refit every task's head; a no-op for parents without heads."""
    heads = ctx.head_linears()
    if not heads:
        return {"maps": 0, "note": "the parents have no task heads: nothing to refit"}
    for i, parent in enumerate(ctx.parents):
        model = ctx.task_model(i)

        def parent_outputs(group: Sequence[str], b: int, parent=parent) -> dict[str, Tensor]:
            seen = ctx.observe(parent, [(m, "output") for m in group], b)
            return {m: seen[(m, "output")] for m in group}

        refit_linears(ctx, model, ctx.forward_groups(model, heads),
                      lambda sites, b, model=model: ctx.observe(model, sites, b), parent_outputs, task=i)
    return {"maps": len(heads) * len(ctx.parents)}

"""``heads``: each task's head refit to its parent's outputs (label-free).

Every linear map of task ``i``'s head (``classifier.*``; RoBERTa's two-layer head map by map) is
re-solved by ridge regression of parent ``i``'s outputs of that map on the merged task model's
inputs to it (the pooler output for BERT, the final-norm CLS token for ViT, every real token for
token classification), pulled towards the merged head (:mod:`.ridge`). When the trunk equals the
parent's up to a permutation, the merged head fits exactly and is returned unchanged.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

from .context import RepairContext
from .least_squares import Observe, refit_linears


def repair_heads(ctx: RepairContext, parents: Sequence[Observe], tasks: Callable[[int], Observe]) -> dict[str, object]:
    """Refit every task's head (a no-op for parents without heads): ``parents[i]`` observes parent
    ``i``, ``tasks(i)`` task ``i``'s merged model, both after the trunk's repairs."""
    heads = ctx.head_linears()
    if not heads:
        return {"maps": 0, "note": "the parents have no task heads: nothing to refit"}
    for i, observe in enumerate(parents):
        model = ctx.task_model(i)

        def parent_outputs(group: Sequence[str], b: int, observe: Observe = observe, model=model) -> dict[str, Tensor]:
            seen = observe([(m, "output") for m in group], b)
            wanted = {}
            for m in group:  # a head widened with zero units (widen_heads): zero targets there
                y = seen[(m, "output")]
                wanted[m] = F.pad(y, (0, model.get_submodule(m).out_features - y.shape[-1]))
            return wanted

        refit_linears(ctx, model, ctx.forward_groups(model, heads), tasks(i), parent_outputs, task=i)
    return {"maps": len(heads) * len(ctx.parents)}

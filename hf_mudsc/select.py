"""``method="auto"``: choose among candidate merges without labels.

Every candidate (a preset, or MuDSC with given zip settings) is solved from the one statistics
pass, applied, and scored by how well its task models agree with their parents on a held-out
slice of the calibration data that the statistics never saw:

- parents with task heads: the mean KL divergence ``KL(parent || merged)`` of the softmax of
  every logits output (per example; per real token for token-level logits); the score is
  ``-KL``, and the top-1 agreement is reported beside it;
- parents without heads: the mean cosine similarity of the parent's last hidden state and the
  merged one brought back to the parent's units (``U_i``), per real token.

The best score wins; ties go to the earlier candidate, so the choice is deterministic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .evaluation import model_inputs
from .statistics.collect import eval_mode

if TYPE_CHECKING:
    from .config import MergeConfig
    from .merger import MergeResult, MuDSCMerger

# (name, recipe overrides), in order of preference on ties: cheap and published first.
CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("average", {"method": "average"}),
    ("weight-matching", {"method": "weight-matching"}),
    ("zipit", {"method": "zipit"}),
    ("mudsc permute", {"method": "mudsc", "mode": "permute"}),
    ("mudsc zip, budget 0", {"method": "mudsc", "mode": "zip", "zip_budget": 0.0, "zip_decay": 0.0}),
    ("mudsc zip, budget 0.5, decay 0", {"method": "mudsc", "mode": "zip", "zip_budget": 0.5, "zip_decay": 0.0}),
    ("mudsc zip, budget 0.5, decay 0.5", {"method": "mudsc", "mode": "zip", "zip_budget": 0.5, "zip_decay": 0.5}),
    ("mudsc zip, budget 1, decay 0.5", {"method": "mudsc", "mode": "zip", "zip_budget": 1.0, "zip_decay": 0.5}),
)


@dataclass
class Reference:
    """The parents' outputs on the held-out batches (computed once for every candidate)."""

    batches: list[dict[str, Tensor]]
    outputs: list[list[list[Tensor]]]  # [parent][batch][output]
    has_heads: bool


@torch.no_grad()
def reference(parents: Sequence[nn.Module], batches: Iterable[Mapping[str, Tensor]], has_heads: bool) -> Reference:
    kept = [dict(b) for b in batches]
    if not kept:
        raise ValueError("the held-out calibration slice is empty: give more calibration samples")
    with eval_mode(parents):  # a parent in train mode would answer with dropout
        return Reference(kept, [[_outputs(p, b, has_heads) for b in kept] for p in parents], has_heads)


@torch.no_grad()
def score(result: "MergeResult", ref: Reference) -> dict[str, float]:
    """Agreement of ``result``'s task models with their parents on the held-out batches."""
    totals = {"kl": 0.0, "agreement": 0.0, "cosine": 0.0}
    count = 0.0
    for i, model in enumerate(result.task_models):
        units = result.transforms["residual"].assign[i] if not ref.has_heads else None
        for batch, parent_out in zip(ref.batches, ref.outputs[i]):
            mask = batch.get("attention_mask")
            for p, q in zip(parent_out, _outputs(model, batch, ref.has_heads)):
                if units is not None:
                    q = q[..., units.to(q.device)]
                rows, weight = _rows(p, q, mask)
                if ref.has_heads:
                    logp, logq = rows[0].log_softmax(-1), rows[1].log_softmax(-1)
                    totals["kl"] += float((logp.exp() * (logp - logq)).sum(-1).sum())
                    totals["agreement"] += float((logp.argmax(-1) == logq.argmax(-1)).sum())
                else:
                    totals["cosine"] += float(F.cosine_similarity(rows[0], rows[1], dim=-1).sum())
                count += weight
    means = {k: v / count for k, v in totals.items()}
    if ref.has_heads:
        return {"score": -means["kl"], "kl": means["kl"], "agreement": means["agreement"]}
    return {"score": means["cosine"], "cosine": means["cosine"]}


def choose(merger: "MuDSCMerger", config: "MergeConfig", heldout: Iterable[Mapping[str, Tensor]], *,
           candidates: Sequence[tuple[str, dict[str, Any]]] = CANDIDATES,
           progress: bool = True) -> "MergeResult":
    """Solve, apply and score every candidate (``config`` with the candidate's overrides) from
    ``merger``'s statistics; return the best result with every candidate's row in
    ``result.selection``."""
    first = merger.parents[0].model
    ref = reference([p.model for p in merger.parents], heldout, first.base_model is not first)
    best, rows = None, []
    for name, overrides in tqdm(candidates, desc="auto: candidates", unit="merge", disable=not progress):
        start = time.perf_counter()
        chosen = config.with_updates(**overrides)
        transforms, report = merger.solve(progress=False, config=chosen)
        result = merger.apply(transforms, chosen, report)
        row = {"candidate": name, **overrides, **{k: round(v, 6) for k, v in score(result, ref).items()},
               "seconds": round(time.perf_counter() - start, 2)}
        rows.append(row)
        if best is None or row["score"] > best[0]["score"]:
            best = (row, result)
        else:
            del result
    row, result = best
    row["chosen"] = True
    result.selection = rows
    return result


def _outputs(model: nn.Module, batch: Mapping[str, Tensor], has_heads: bool) -> list[Tensor]:
    """Every logits output of ``model`` (task heads), or its last hidden state (base models), on the CPU."""
    out = model(**model_inputs(model, batch))
    if not has_heads:
        return [out.last_hidden_state.float().cpu()]
    return [v.double().cpu() for k, v in out.items() if k.endswith("logits") and isinstance(v, Tensor)]


def _rows(p: Tensor, q: Tensor, mask: Tensor | None) -> tuple[tuple[Tensor, Tensor], float]:
    """Per-token outputs (batch x tokens x features) keep the real tokens only; returns the rows
    and their count."""
    if p.dim() == 3 and mask is not None:
        keep = mask.cpu().bool()
        return (p[keep], q[keep]), float(keep.sum())
    p, q = p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1])
    return (p, q), float(p.shape[0])

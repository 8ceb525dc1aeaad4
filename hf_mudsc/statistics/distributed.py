"""Accelerate multi-process runs: exact reduction of every rank's moments."""
from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import broadcast

from .moments import Moments


def reduce_moments(moments: dict[str, Moments], accelerator: Any) -> dict[str, Moments]:
    """Combine every rank's moments exactly; every rank gets the total.

    Per space: the shift of the first rank with samples is broadcast, each rank re-centres
    onto it, and ``n``, ``s1``, ``s2`` are summed with ``accelerator.reduce``. Collective:
    every rank must call it with the same space names. Without an accelerator, or with one
    process, ``moments`` is returned unchanged.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return moments
    return {name: _reduce_one(moments[name], accelerator) for name in sorted(moments)}


def _reduce_one(m: Moments, accelerator: Any) -> Moments:
    comm = accelerator.device
    counts = accelerator.gather(torch.tensor([m.n], dtype=torch.int64, device=comm))
    filled = counts.nonzero()
    if filled.numel() == 0:
        return m
    shift = broadcast(m.shift.to(comm).clone(), from_process=int(filled[0, 0]))
    local = Moments.from_dict(m.to_dict(), device=m.device).recentre(shift)
    total = {
        "n": counts.sum().cpu(),
        "shift": local.shift,
        "s1": accelerator.reduce(local.s1.to(comm), reduction="sum"),
        "s2": accelerator.reduce(local.s2.to(comm), reduction="sum"),
    }
    return Moments.from_dict(total, device=m.device)


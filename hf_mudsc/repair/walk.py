"""One forward walk for every repair: each model runs each layer about once, whatever the repairs.

The parents' outputs do not depend on the merge, so each parent runs each encoder layer once
(:meth:`.context.LayerInputs.advance`), giving on the way every target of that layer: the output
moments ``stats`` wants and the outputs ``lsq`` fits. The merged model then corrects the layer's
maps in forward order, group by group (maps that read one input, as q, k, v): one run of the layer
up to the group's input gives the maps' inputs (for ``lsq``; their output moments for ``stats``
follow from the same sums, so the maps themselves need not run), and the parts of the layer that
can no longer change are not run again (their outputs are kept:
:meth:`.context.LayerInputs.observe_all`); a map that both repairs touch is renormalised first,
then re-solved pulled towards the renormalised map. A corrected group's targets are dropped, so
the layer's last group (the FFN output map, while the FFN's activations are kept) holds only its own.
After the last layer, the maps that follow the encoder (BERT's pooler; ``lsq``) and the task heads
(``heads``) are fitted by replaying the cached encoder outputs (:meth:`.context.LayerInputs.replay`),
so that no model runs its layers again. A partial merge (later layers private per task) observes
each task model by a full pass instead. A map before the first layer (ELECTRA-small's embedding
projection; ``lsq``) is refitted before the walk starts, from passes that stop at its outputs.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Collection, Iterator, Sequence

import torch

from ..spill import trim_heap
from .context import LayerInputs, RepairContext, Site
from .heads import repair_heads
from .least_squares import Observe, averaged_outputs, refit_linears
from .norm_stats import UnitMoments, renormalised, stats_modules
from .ridge import RidgeSums


class Clock:
    """Wall and CPU seconds per repair; a step that serves several repairs is split evenly among them."""

    def __init__(self, names: Collection[str]) -> None:
        self.seconds = {n: 0.0 for n in names}
        self.cpu = {n: 0.0 for n in names}

    @contextmanager
    def charge(self, names: Collection[str]) -> Iterator[None]:
        names = [n for n in self.seconds if n in names] or list(self.seconds)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            for n in names:
                self.seconds[n] += (time.perf_counter() - start) / len(names)
                self.cpu[n] += (time.process_time() - cpu) / len(names)


def walk(ctx: RepairContext, names: Collection[str], clock: Clock) -> dict[str, dict[str, Any]]:
    """Run the repairs ``names`` (``stats``, ``lsq``, ``heads``) on ``ctx`` in place; what each did."""
    trunk = [n for n in ("stats", "lsq") if n in names]
    model = ctx.task_model(0)
    shared = ctx.shared_linears()
    renorm = set(stats_modules(ctx)) if "stats" in names else set()
    refit = set(shared) if "lsq" in names else set()
    blocks = ctx.blocks()
    with clock.charge(names):
        groups = ctx.forward_groups(model, [m for m in shared if m in renorm | refit]) if renorm | refit else []
        per_layer = [[g for g in groups if g[0].startswith(block + ".")] for block in blocks]
        depth = max((l + 1 for l, gs in enumerate(per_layer) if gs), default=0)
        # lsq's groups outside every layer: before the first (ELECTRA-small's embedding projection), refitted
        # first, by passes stopped at their outputs, so that every layer is corrected on their final outputs;
        # after the last (BERT's pooler), refitted at the end from the cached encoder outputs
        inside = [j for j, g in enumerate(groups) if any(g[0].startswith(b + ".") for b in blocks)]
        head = groups[:inside[0]] if refit and inside else []
        tail = groups[inside[-1] + 1:] if refit and inside else []
    if head:
        with clock.charge(["lsq"]):
            refit_linears(ctx, model, head, lambda sites, b: ctx.observe(model, sites, b), averaged_outputs(
                ctx, [lambda sites, b, p=p: ctx.observe(p, sites, b) for p in ctx.parents]))
    with clock.charge(names):
        merged = LayerInputs(ctx, model, blocks, reuse=True)  # its layers run once per group of maps
        parents = [LayerInputs(ctx, m, blocks, recorded=None if ctx.recorded is None else ctx.recorded.for_parent(
            i, m, ctx.batches, ctx.seed, ctx.max_tokens_per_batch)) for i, m in enumerate(ctx.parents)]
    for l in range(depth):
        layer = [m for g in per_layer[l] for m in g]
        with clock.charge(trunk):
            seen = [runner.advance([(m, "output") for m in layer if i in ctx.sources(m)])
                    for i, runner in enumerate(parents)]
        for group in per_layer[l]:
            with clock.charge([n for n, maps in (("stats", renorm), ("lsq", refit)) if set(group) & maps]):
                _correct(ctx, model, group, merged, seen, renorm, refit)
            for rows in (r for parent in seen for r in parent):  # the group's targets are spent
                for m in group:
                    rows.pop((m, "output"), None)
            trim_heap()
        del seen  # the parents' rows of this layer go before the next layer's are taken: one layer's at a time
        if l + 1 < depth:
            with clock.charge(trunk):
                merged.advance()
    # every encoder layer shared: the merged cache is every task model's encoder output
    full = all(any(m.startswith(block + ".") for m in shared) for block in blocks)
    if tail or "heads" in names:
        with clock.charge(["lsq"] if tail else ["heads"]):
            for runner in (*parents, *([merged] if full else [])):
                runner.finish()
    parent_obs: list[Observe] = [lambda sites, b, r=r: r.replay(sites, b) for r in parents]

    def task_obs(i: int) -> Observe:
        if full:
            return lambda sites, b: merged.replay(sites, b, ctx.task_model(i))
        return lambda sites, b: ctx.observe(ctx.task_model(i), sites, b)

    done: dict[str, dict[str, Any]] = {}
    if "stats" in names:
        done["stats"] = {"maps": len(renorm)} if renorm else {"maps": 0, "note": "no merged attention output or FFN layer"}
    if "lsq" in names:
        with clock.charge(["lsq"]):
            refit_linears(ctx, model, tail, task_obs(0), averaged_outputs(ctx, parent_obs))
        done["lsq"] = {"maps": len(refit)}
    if "heads" in names:
        with clock.charge(["heads"]):
            done["heads"] = repair_heads(ctx, parent_obs, task_obs)
    return done


def _correct(ctx: RepairContext, model: torch.nn.Module, group: Sequence[str], merged: LayerInputs,
             seen: Sequence[list[dict[Site, torch.Tensor]]], renorm: Collection[str], refit: Collection[str]) -> None:
    """Renormalise (``stats``) and re-solve (``lsq``) one group of maps of the merged layer from one
    run of the layer per batch, up to the group's shared input; ``seen[i][b]``: parent ``i``'s
    outputs of the layer's maps. A map that both repairs touch has its output moments from the
    ridge sums of its inputs (:meth:`.ridge.RidgeSums.output_moments`), so the run stops before it;
    only a map renormalised alone is run to observe its outputs."""
    for m in group:
        if m in renorm and model.get_submodule(m).bias is None:
            raise ValueError(f"'{m}' has no bias, so its units cannot be shifted")
    sites = [(m, "input") for m in group if m in refit] + [(m, "output") for m in group if m in renorm and m not in refit]
    targets = averaged_outputs(ctx, [lambda s, b, rows=rows: {site: rows[b][site] for site in s} for rows in seen])
    sums = {m: RidgeSums(model.get_submodule(m).bias is not None) for m in group if m in refit}
    observed = {m: UnitMoments() for m in group if m in renorm and m not in refit}
    for b, rows in enumerate(merged.observe_all(sites, inputs_at={m: group[0] for m in group})):
        if sums:
            fitted = targets(list(sums), b)
            for m, s in sums.items():
                s.update(rows[(m, "input")], fitted[m])
        for m, moments in observed.items():
            moments.update(rows[(m, "output")])
    for m in group:
        module = model.get_submodule(m)
        weight, bias = module.weight, module.bias
        if m in renorm:
            measured = observed[m].mean_std() if m in observed else sums[m].output_moments(weight, bias)
            weight, bias = renormalised(weight, bias, measured, _stats_target(ctx, m, seen))
        if m in sums:
            weight, bias = sums[m].solve(weight, bias)
        ctx.set_linear(m, weight, bias)


def _stats_target(ctx: RepairContext, module: str,
                  seen: Sequence[list[dict[Site, torch.Tensor]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The merge-weighted sum of the parents' per-unit output mean and std of ``module``."""
    target = None
    for i in ctx.sources(module):
        moments = UnitMoments()
        for rows in seen[i]:
            moments.update(rows[(module, "output")])
        mean, std = (ctx.to_merged(module, v, i, 0) for v in moments.mean_std())
        target = (mean, std) if target is None else (target[0] + mean, target[1] + std)
    return target

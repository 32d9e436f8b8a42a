"""The search's side of fitness: batches of (ratios, window indices) out, per-window losses back.

Losses are kept per window so that a candidate screened on the first few windows is completed on
the rest without repeating them (multi-fidelity), and identical ratio vectors (rounded) share one
entry (fitness cache). The model side (prune, measure, restore) is evaluators/session.py, run by
the workers of dsa/distributed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Sequence


def ratio_key(ratios: Sequence) -> str:
    """Allocations that agree to 4 decimals prune the same weights up to a row or two. A per-matrix
    allocation has the same key as a flat vector or as one {linear name: ratio} per block."""
    values = [v for r in ratios for v in (r.values() if isinstance(r, Mapping) else (r,))]
    return ",".join(f"{float(v):.4f}" for v in values)


def score(window_losses: Sequence[float], tokens_per_window: int, objective: str) -> float:
    """Perplexity (or mean KL per token) over the given windows' losses."""
    mean = sum(window_losses) / (len(window_losses) * tokens_per_window)
    return math.exp(mean) if objective == "ppl" else mean


class PoolEvaluator:
    """Fitness through a worker pool: only ratio vectors go out and per-window losses come back.

    Each job goes to a worker holding its model (`group`; None: the pool's only model). The pool
    runs a batch on its workers in parallel (or in this process).
    """

    def __init__(self, pool, tokens_per_window: int | dict[str, int], objective: str):
        self.pool = pool
        self.tokens_per_window = tokens_per_window
        self.objective = objective

    def losses_many(self, jobs: list[tuple], desc: str | None = None, group: str | None = None) -> list[list[float]]:
        """Per-window losses of each (ratios, window indices, form) job, on the workers holding `group`."""
        return self.losses_routed([(group, job) for job in jobs], desc)

    def losses_routed(self, jobs: list[tuple[str | None, tuple]], desc: str | None = None) -> list[list[float]]:
        """Per-window losses of (group, job) pairs in one batch: every model's workers at once."""
        return self.pool.map_routed("losses", [(group or self.pool.groups[0], job) for group, job in jobs], desc)

    def score(self, window_losses: Sequence[float], group: str | None = None) -> float:
        tokens = self.tokens_per_window
        if isinstance(tokens, dict):
            tokens = tokens[group or self.pool.groups[0]]
        return score(window_losses, tokens, self.objective)


class FitnessCache:
    """Fitness of allocations on their first `count` windows, evaluated as one batch.

    Only windows not cached yet are evaluated (per-window losses live in `state.losses`, keyed
    by the rounded ratio vector, after `namespace`: the model and sparsity in a multi-model
    search, nothing in a single-model one); an allocation requested twice, or already known, is
    a cache hit. Shared by the function search and the per-block search; counters go to `state`.
    """

    def __init__(self, state, evaluator, namespace: str = "", group: str | None = None, form: str = "cached",
                 units=None):
        self.state = state
        self.evaluator = evaluator
        self.namespace = namespace
        self.group = group
        self.form = form  # how candidates are pruned: "cached" (the search's Wanda) or "sequential"
        self.units = units  # a per-matrix search's MatrixUnits: flat vectors go to the pruner as entries

    def payload(self, ratios) -> list:
        """The ratios as the pruners take them: a flat per-matrix vector (one entry per matrix, never
        as many as the blocks) as one mapping per block; per-block ratios (a baseline's) as they are."""
        flat = (self.units is not None and len(ratios) == len(self.units.flat_roles)
                and not any(isinstance(r, Mapping) for r in ratios))
        return self.units.entries(ratios) if flat else list(ratios)

    def key(self, ratios) -> str:
        # Sequential-form losses are other numbers for the same ratios: they never share an entry.
        return self.namespace + ("" if self.form == "cached" else f"{self.form}:") + ratio_key(ratios)

    def plan(self, allocations: list, count: int) -> dict:
        """The windows `allocations` still need of their first `count` (key -> (ratios, missing
        window indices)); an allocation requested twice, or already known, is a cache hit."""
        jobs = {}
        for ratios in allocations:
            key = self.key(ratios)
            known = self.state.losses.setdefault(key, {})
            missing = [i for i in range(count) if str(i) not in known]
            if missing and key not in jobs:
                jobs[key] = (ratios, missing)
            else:
                self.state.cache_hits += 1
        return jobs

    def record(self, jobs: dict, results: list[list[float]]) -> None:
        for (key, (_, missing)), losses in zip(jobs.items(), results):
            self.state.losses[key].update({str(i): loss for i, loss in zip(missing, losses)})
            self.state.evaluations += 1
            self.state.windows_evaluated += len(missing)

    def values(self, allocations: list, count: int) -> list[float]:
        return [self.evaluator.score([self.state.losses[self.key(r)][str(i)] for i in range(count)], self.group)
                for r in allocations]

    def __call__(self, allocations: list, count: int, desc: str | None = None) -> list[float]:
        return fitness_together([(self, allocations, count)], desc)[0]


def fitness_together(requests: list[tuple[FitnessCache, list, int]], desc: str | None = None) -> list[list[float]]:
    """The fitness of several (cache, allocations, window count) requests, e.g. one per model of
    a multi-model search, evaluated as one batch: each model's workers evaluate its jobs while
    the other models' workers evaluate theirs, instead of waiting their turn."""
    plans = [cache.plan(allocations, count) for cache, allocations, count in requests]
    routed = [(cache.group, (cache.payload(ratios), missing, cache.form))
              for (cache, _, _), jobs in zip(requests, plans) for ratios, missing in jobs.values()]
    results = iter(requests[0][0].evaluator.losses_routed(routed, desc) if routed else [])
    for (cache, _, _), jobs in zip(requests, plans):
        cache.record(jobs, [next(results) for _ in jobs])
    return [cache.values(allocations, count) for cache, allocations, count in requests]

"""The search's side of fitness: batches of (ratios, window indices) out, per-window losses back.

Losses are kept per window so that a candidate screened on the first few windows is completed on
the rest without repeating them (multi-fidelity), and identical ratio vectors (rounded) share one
entry (fitness cache). The model side (prune, measure, restore) is evaluators/session.py, run by
the workers of dsa/distributed.
"""
from __future__ import annotations

import math
from typing import Sequence


def ratio_key(ratios: Sequence[float]) -> str:
    """Allocations that agree to 4 decimals prune the same weights up to a row or two."""
    return ",".join(f"{float(r):.4f}" for r in ratios)


def score(window_losses: Sequence[float], tokens_per_window: int, objective: str) -> float:
    """Perplexity (or mean KL per token) over the given windows' losses."""
    mean = sum(window_losses) / (len(window_losses) * tokens_per_window)
    return math.exp(mean) if objective == "ppl" else mean


class PoolEvaluator:
    """Fitness through a worker pool: only ratio vectors go out and per-window losses come back.

    The pool runs a batch on its workers in parallel (or in this process).
    """

    def __init__(self, pool, tokens_per_window: int, objective: str):
        self.pool = pool
        self.tokens_per_window = tokens_per_window
        self.objective = objective

    def losses_many(self, jobs: list[tuple[list[float], list[int]]], desc: str | None = None) -> list[list[float]]:
        return self.pool.map("losses", jobs, desc)

    def score(self, window_losses: Sequence[float]) -> float:
        return score(window_losses, self.tokens_per_window, self.objective)

"""Scores across models, and how far two ways of measuring agree."""
from __future__ import annotations

import math
from typing import Sequence


def multi_model_score(values: Sequence[float], references: Sequence[float]) -> float:
    """The mean over targets (models x sparsities) of log(value / reference): with uniform's
    perplexity as each target's reference, the score a multi-model search selects by, so no
    model's scale dominates. 0: as good as the references everywhere."""
    return sum(math.log(v / r) for v, r in zip(values, references)) / len(values)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (no tie correction)."""
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, index in enumerate(order):
            out[index] = float(rank)
        return out
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def rank_agreement(cached: list[float], final: list[float]) -> dict:
    """The rank check: how the search's fitness (its cached form) and the final pruner order the
    same allocations, with both lists of values."""
    return {"count": len(cached), "spearman": spearman(cached, final), "cached_fitness": cached,
            "final_validation": final}

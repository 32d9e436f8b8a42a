"""Fitness of an allocation: prune at its ratios, measure loss per fitness window, restore.

Losses are kept per window so that a candidate screened on the first few windows is completed on
the rest without repeating them (multi-fidelity), and identical ratio vectors (rounded) share one
entry (fitness cache).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

OBJECTIVES = ("ppl", "kl")


def ratio_key(ratios: Sequence[float]) -> str:
    """Allocations that agree to 4 decimals prune the same weights up to a row or two."""
    return ",".join(f"{float(r):.4f}" for r in ratios)


class LocalEvaluator:
    """Evaluates candidates in this process on a workbench's model (validation windows only)."""

    def __init__(self, bench, text: str, count: int, objective: str = "ppl"):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}")
        self.bench = bench
        self.objective = objective
        self.windows = bench.windows(text, count)
        self.dense_logprobs = self._dense_logprobs() if objective == "kl" else None

    @torch.no_grad()
    def _dense_logprobs(self) -> list[torch.Tensor]:
        self.bench.pruner.restore()
        model = self.bench.loaded.model
        return [torch.log_softmax(model(w[None].to(self.bench.loaded.device), use_cache=False).logits[0, :-1].float(), -1)
                for w in self.windows]

    @torch.no_grad()
    def losses(self, ratios: Sequence[float], indices: Sequence[int]) -> list[float]:
        """Summed loss of each requested window (NLL, or KL to the dense model's predictions)."""
        self.bench.pruner.prune(list(ratios))
        windows = self.windows[list(indices)]
        if self.objective == "ppl":
            return self.bench.window_nll(windows).tolist()
        model = self.bench.loaded.model
        out = []
        for index, window in zip(indices, windows):
            logits = model(window[None].to(self.bench.loaded.device), use_cache=False).logits[0, :-1].float()
            dense = self.dense_logprobs[index]
            out.append(F.kl_div(torch.log_softmax(logits, -1), dense, log_target=True, reduction="sum").item())
        return out

    def score(self, window_losses: Sequence[float]) -> float:
        return score(window_losses, self.windows.shape[1] - 1, self.objective)


def score(window_losses: Sequence[float], tokens_per_window: int, objective: str) -> float:
    """Perplexity (or mean KL per token) over the given windows' losses."""
    mean = sum(window_losses) / (len(window_losses) * tokens_per_window)
    return math.exp(mean) if objective == "ppl" else mean


class PoolEvaluator:
    """The search's view of fitness: batches of (ratios, window indices) sent to a worker pool.

    Only ratio vectors go out and per-window losses come back; the pool runs the batch on its
    workers in parallel (or in this process).
    """

    def __init__(self, pool, tokens_per_window: int, objective: str):
        self.pool = pool
        self.tokens_per_window = tokens_per_window
        self.objective = objective

    def losses_many(self, jobs: list[tuple[list[float], list[int]]], desc: str | None = None) -> list[list[float]]:
        return self.pool.map("losses", jobs, desc)

    def score(self, window_losses: Sequence[float]) -> float:
        return score(window_losses, self.tokens_per_window, self.objective)

"""Element-wise pruning scores and the N:M mask: the two rules every pruner here shares."""
from __future__ import annotations

import torch

METRICS = ("wanda", "magnitude")


def score_matrix(weight: torch.Tensor, norm: torch.Tensor | None, metric: str) -> torch.Tensor:
    """Element-wise importance: Wanda |W_ij| * ||X_j|| or magnitude |W_ij| (float32)."""
    if metric == "magnitude":
        return weight.abs().float()
    if metric == "wanda":
        return weight.abs().float() * norm.to(weight.device)[None, :]
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True for the n highest-scoring weights in every group of m consecutive inputs of a row."""
    groups = scores.view(scores.shape[0], -1, m)
    drop = groups.topk(m - n, dim=-1, largest=False).indices
    return torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).view_as(scores)

"""Wanda's per-layer rule (Sun et al. 2024), used sequentially: drop each row's lowest |W_ij| * ||X_j||.

||X_j|| comes from the inputs that the already pruned earlier blocks produce (the sequential
driver collects them); the search's form from the dense model's cached orders is `cached.py`.
"""
from __future__ import annotations

import torch

from ..capture import InputStats
from ..scores import nm_keep_mask, score_matrix
from .base import NM, Pruner


def wanda_prune_rows(weight: torch.Tensor, sq: torch.Tensor, ratio: float, nm: NM) -> None:
    """In place: each row's round(ratio * in) lowest scores, or per N:M group; sq: sum of x_j^2."""
    scores = score_matrix(weight, sq.sqrt(), "wanda")
    if nm:
        weight.mul_(nm_keep_mask(scores, *nm))
        return
    count = round(ratio * weight.shape[1])
    if count:
        weight.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :count], 0.0)


def prune_layer(weight: torch.Tensor, stats: InputStats, ratio: float, nm: NM) -> None:
    wanda_prune_rows(weight, stats.sq, ratio, nm)


WANDA = Pruner("wanda", prune_layer=prune_layer)

"""Magnitude pruning: one threshold per matrix (`magnitude`) or per output row (`magnitude-row`)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..models import LoadedModel
from .base import NM, BlockRatio, Pruner, ratio_of
from .cached import CachedPruner, prune_from_orders


@torch.no_grad()
def prune_magnitude_per_matrix(loaded: LoadedModel, ratios: Sequence[BlockRatio]) -> None:
    """Magnitude pruning as the Wanda, OWL and AlphaPruning code does it: one threshold per matrix.

    Each matrix of block i loses exactly round(ratio * rows * cols), its ratio ratios[i] (or its own), of its smallest |W_ij|
    (ties broken by position), wherever they sit in their rows. (Their code zeroes every weight
    at or below the int(r * n)-th smallest magnitude, the same set up to one weight and ties.)
    """
    for block in loaded.blocks:
        for name, layer in block.linears.items():
            count = round(ratio_of(ratios[block.index], name) * layer.weight.numel())
            if count:
                order = torch.argsort(layer.weight.abs().flatten(), stable=True)
                layer.weight.view(-1)[order[:count]] = 0.0


def prune_per_matrix(cached: CachedPruner, ratios: Sequence[float], nm: NM) -> None:
    """N:M goes by the cached pruner's scores per group (magnitude when the calibrated model's metric is)."""
    if nm:
        cached.prune_n_m(*nm)
        return
    prune_magnitude_per_matrix(cached.loaded, ratios)
    cached.mark_modified()


MAGNITUDE = Pruner("magnitude", prune_model=prune_per_matrix)
# Each row's smallest |W_ij|: the cached orders, which must then be sorted by magnitude.
MAGNITUDE_ROW = Pruner("magnitude-row", prune_model=prune_from_orders, metric="magnitude")

"""The search's form of pruning: each row's lowest scores from cached score orders, incrementally.

Every row of a matrix loses exactly round(ratio * in_features) weights, the lowest-scoring ones
by the calibrated model's metric (Wanda |W_ij| * ||X_j|| on the dense model's activations, or magnitude;
Wanda compares weights per output row). The dense weights are kept so the next candidate starts
from them without reloading the model. As a final pruner this is Wanda's cached form and
magnitude-row.
"""
from __future__ import annotations

from typing import Sequence

import torch

from dsa.core.errors import UserError
from ..calibration import layer_key
from ..models import LoadedModel
from ..scores import nm_keep_mask, score_matrix
from .base import NM, BlockRatio, Pruner, ratio_of


class CachedPruner:
    def __init__(self, loaded: LoadedModel, orders: dict[str, torch.Tensor] | None,
                 norms: dict[str, torch.Tensor] | None = None, metric: str = "wanda"):
        self.loaded = loaded
        self.orders = orders
        self.norms = norms
        self.metric = metric
        self.layers = {layer_key(b.index, n): layer for b in loaded.blocks for n, layer in b.linears.items()}
        self.block_of = {layer_key(b.index, n): b.index for b in loaded.blocks for n in b.linears}
        self.name_of = {layer_key(b.index, n): n for b in loaded.blocks for n in b.linears}
        self.dense = {key: layer.weight.detach().clone() for key, layer in self.layers.items()}
        self.counts: dict[str, int] | None = None  # weights pruned per row now; None: unknown state

    def restore(self) -> None:
        """Put the dense weights back, bit-exact."""
        with torch.no_grad():
            for key, layer in self.layers.items():
                layer.weight.copy_(self.dense[key])
        self.counts = {key: 0 for key in self.layers}

    def memory(self) -> dict[str, int]:
        """What this pruner holds beyond the model: the dense copy and the score orders."""
        def size(tensors):
            return sum(t.numel() * t.element_size() for t in tensors)
        return {"prunable_params": sum(t.numel() for t in self.dense.values()),
                "dense_copy_bytes": size(self.dense.values()), "orders_bytes": size((self.orders or {}).values())}

    def mark_modified(self) -> None:
        """Weights were changed outside `prune` (N:M, sequential pruning): restore fully next time."""
        self.counts = None

    @torch.no_grad()
    def prune(self, block_ratios: Sequence[BlockRatio]) -> None:
        """Zero each row's lowest-scoring round(ratio * in_features) weights, all others dense; a
        block's entry is its ratio or one per matrix (base.ratio_of).

        Incremental: from the previous candidate's state only the difference is zeroed or
        restored, which costs a fraction of a full restore.
        """
        if self.orders is None:
            raise ValueError("this pruner has no cached score orders")
        n_blocks = len(self.loaded.blocks)
        if len(block_ratios) != n_blocks:
            raise UserError(f"got {len(block_ratios)} ratios for {n_blocks} blocks")
        if self.counts is None:
            self.restore()
        for key, layer in self.layers.items():
            ratio = ratio_of(block_ratios[self.block_of[key]], self.name_of[key])
            if not 0.0 <= ratio < 1.0:
                raise UserError(f"ratio {ratio} of {key} is outside [0, 1)")
            count, current = round(ratio * layer.in_features), self.counts[key]
            if count > current:
                layer.weight.scatter_(1, self.orders[key][:, current:count].long(), 0.0)
            elif count < current:
                index = self.orders[key][:, count:current].long()
                layer.weight.scatter_(1, index, self.dense[key].gather(1, index))
            self.counts[key] = count

    @torch.no_grad()
    def prune_n_m(self, n: int, m: int) -> None:
        """Restore, then in every group of m consecutive inputs of a row keep the n best scores."""
        self.restore()
        for key, layer in self.layers.items():
            if layer.in_features % m:
                raise UserError(f"{key} has {layer.in_features} inputs, not a multiple of {m}")
            scores = score_matrix(self.dense[key], (self.norms or {}).get(key), self.metric)
            layer.weight.mul_(nm_keep_mask(scores, n, m))
        self.mark_modified()


def prune_from_orders(cached: CachedPruner, ratios: Sequence[float], nm: NM) -> None:
    """Per row from the cached orders, or N:M by the same scores."""
    if nm:
        cached.prune_n_m(*nm)
    else:
        cached.prune(list(ratios))


# Wanda from the dense model's activations, as the search prunes (wanda_form "cached"); it prunes
# by whatever metric the calibrated model's orders were sorted by.
WANDA_CACHED = Pruner("wanda", prune_model=prune_from_orders)

"""Prune a loaded model in place at per-block ratios from cached score orders.

Every row of a matrix loses exactly round(ratio * in_features) weights, the lowest-scoring ones
(Wanda compares weights per output row). The dense weights are kept so the next candidate
starts from them without reloading the model.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .calibration import layer_key
from dsa.core.errors import UserError
from .models import LoadedModel
from .scores import nm_keep_mask, score_matrix


def parse_structure(text: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): keep N of every M consecutive input weights of a row."""
    if not text or text == "unstructured":
        return None
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError:
        raise UserError(f"bad structure {text!r}: use N:M such as 2:4, or 'unstructured'")
    if not 0 < n < m:
        raise UserError(f"bad structure {text!r}: N:M needs 0 < N < M")
    return n, m


class Pruner:
    def __init__(self, loaded: LoadedModel, orders: dict[str, torch.Tensor] | None,
                 norms: dict[str, torch.Tensor] | None = None, metric: str = "wanda"):
        self.loaded = loaded
        self.orders = orders
        self.norms = norms
        self.metric = metric
        self.layers = {layer_key(b.index, n): layer for b in loaded.blocks for n, layer in b.linears.items()}
        self.block_of = {layer_key(b.index, n): b.index for b in loaded.blocks for n in b.linears}
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
    def prune(self, block_ratios: Sequence[float]) -> None:
        """Zero each row's lowest-scoring round(ratio * in_features) weights, all others dense.

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
            ratio = block_ratios[self.block_of[key]]
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


@torch.no_grad()
def prune_magnitude_per_matrix(loaded: LoadedModel, ratios: Sequence[float]) -> None:
    """Magnitude pruning as the Wanda, OWL and AlphaPruning code does it: one threshold per matrix.

    Each matrix of block i loses exactly round(ratios[i] * rows * cols) of its smallest |W_ij|
    (ties broken by position), wherever they sit in their rows. (Their code zeroes every weight
    at or below the int(r * n)-th smallest magnitude, the same set up to one weight and ties.)
    """
    for block in loaded.blocks:
        ratio = float(ratios[block.index])
        for layer in block.linears.values():
            count = round(ratio * layer.weight.numel())
            if count:
                order = torch.argsort(layer.weight.abs().flatten(), stable=True)
                layer.weight.view(-1)[order[:count]] = 0.0


def zero_fraction(loaded: LoadedModel) -> float:
    """Zeros actually present over all prunable matrices (the achieved sparsity)."""
    zeros = total = 0
    for block in loaded.blocks:
        for layer in block.linears.values():
            zeros += (layer.weight == 0).sum().item()
            total += layer.weight.numel()
    return zeros / total


def block_sizes(loaded: LoadedModel) -> torch.Tensor:
    return torch.tensor([float(b.size) for b in loaded.blocks], dtype=torch.float64)

"""What a pruner is to the session, the N:M option every pruner honours, and what pruning achieved.

A pruner is either *sequential* (a per-layer rule that the sequential driver calls block by block,
with statistics of inputs that the already pruned blocks produced) or a *model* pruner (it prunes
every matrix at once from the dense weights the session's cached pruner keeps).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Union

import torch

from dsa.core.errors import UserError
from ..models import LoadedModel

NM = tuple[int, int] | None  # keep N of every M consecutive inputs of a row; None: unstructured
# One block's entry of an allocation: a ratio for all its matrices, or one per matrix by linear
# name (dsa/allocation/matrices.py); every pruner reads it through ratio_of.
BlockRatio = Union[float, Mapping[str, float]]


def ratio_of(entry: BlockRatio, linear_name: str) -> float:
    """The ratio a block's entry gives one of its matrices."""
    if isinstance(entry, Mapping):
        if linear_name not in entry:
            raise UserError(f"the per-matrix ratios give no ratio for {linear_name}")
        return float(entry[linear_name])
    return float(entry)


def is_per_matrix(ratios) -> bool:
    """Whether an allocation gives some block one ratio per matrix."""
    return any(isinstance(entry, Mapping) for entry in ratios)


@dataclass(frozen=True)
class Pruner:
    """One pruner, as the session dispatches on it by name.

    prune_layer(weight, stats, ratio, nm): a sequential pruner's rule for one nn.Linear weight,
        in place; stats is the layer's `capture.InputStats` over the calibration tokens.
    needs_hessian: the sequential rule reads stats.hessian (X^T X), not only stats.sq.
    prune_model(cached, ratios, nm): a model pruner; `cached` is the session's CachedPruner
        (the model, its dense weights and cached score orders), restored before the call.
    metric: the calibrated model's score metric whose cached orders this pruner prunes by, if it must be one.
    """

    name: str
    prune_layer: Callable[..., None] | None = None
    needs_hessian: bool = False
    prune_model: Callable[..., None] | None = None
    metric: str | None = None

    @property
    def sequential(self) -> bool:
        """Needs a calibration pass through the pruned blocks (the sequential driver)."""
        return self.prune_layer is not None


def parse_structure(text: str | None) -> NM:
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


def zero_fraction(loaded: LoadedModel) -> float:
    """Zeros actually present over all prunable matrices (the achieved sparsity)."""
    zeros = total = 0
    for block in loaded.blocks:
        for layer in block.linears.values():
            zeros += (layer.weight == 0).sum().item()
            total += layer.weight.numel()
    return zeros / total


def block_sizes(loaded: LoadedModel) -> torch.Tensor:
    """Prunable weights per block: what a sparsity budget is a fraction of."""
    return torch.tensor([float(b.size) for b in loaded.blocks], dtype=torch.float64)


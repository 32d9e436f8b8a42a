"""What the protocol asks of a model, and the final pruner's measurement written once.

The search's report measures through its worker pool (dsa/search/pool_measurer.py), apply.py in
this process on an EvaluationSession (session.py here). Both answer the same small requests:
ratio vectors in, numbers out. Every rule of the protocol is written against this interface.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from dsa.functions.pipeline import FeatureMemo


@dataclass(frozen=True)
class Read:
    """One measurement after a prune: `texts` on their first `windows` windows each; with
    `per_window`, each window's log-perplexity (a list per text) instead of each text's perplexity."""

    texts: tuple[str, ...]
    windows: int
    per_window: bool = False


class Measurer(Protocol):
    """A model (or several, by name) the protocol measures with the final pruner."""

    pruner: str  # the final pruner's name, for the records

    def measure(self, routed: Sequence[tuple[str, list[float]]], reads: Sequence[Read],
                desc: str = "") -> list[list[dict]]:
        """Each (model, ratios) pruned with the final pruner, then every read: per allocation, one
        dict per read (text -> perplexity, or text -> per-window log-perplexities)."""

    def baseline(self, model: str, method: str, sparsity: float,
                 atp_step: float | None = None) -> tuple[list[float], list[float] | None]:
        """A baseline's (ratios, per-block metric) on `model`; `atp_step`: ATP's common difference."""

    def dense(self, model: str, texts: Sequence[str], windows: int) -> dict[str, float]:
        """The unpruned model's perplexity on each text: the report's reference row."""

    def sizes(self, model: str) -> torch.Tensor:
        """Prunable weights per block (float64)."""

    def features(self, model: str, matrix: bool = False) -> FeatureMemo:
        """A memo of function prefixes' per-block values (per-matrix with `matrix`, its `units` set),
        computed where the model is."""


def allocation_key(model: str, ratios: Sequence[float]) -> tuple:
    """Allocations equal to 1e-9 on the same model prune the same weights: the final pruner is
    deterministic given the ratios, and keeps whole weights."""
    return model, tuple(tuple(sorted((k, round(float(v), 9)) for k, v in x.items())) if isinstance(x, Mapping)
                        else round(float(x), 9) for x in ratios)


def final_reads(measurer: Measurer, routed: Sequence[tuple[str, list[float]]], reads: Sequence[Read],
                desc: str = "") -> list[list[dict]]:
    """`measurer.measure` with every allocation equal to an earlier one on the same model (a
    searched ramp that is ATP's) pruned once, in one batch."""
    keys = [allocation_key(model, ratios) for model, ratios in routed]
    unique = list(dict.fromkeys(keys))
    first = [routed[keys.index(key)] for key in unique]
    by_key = dict(zip(unique, measurer.measure(first, reads, desc)))
    return [by_key[key] for key in keys]


def final_perplexities(measurer: Measurer, routed: Sequence[tuple[str, list[float]]], texts: Sequence[str],
                       windows: int, per_window: bool = False, desc: str = "") -> list[dict]:
    """Each (model, ratios) pruned with the final pruner and measured on `texts`, `windows` windows
    each (each text's perplexity, or with `per_window` each window's log-perplexity)."""
    read = Read(tuple(texts), windows, per_window)
    return [rows[0] for rows in final_reads(measurer, routed, [read], desc)]

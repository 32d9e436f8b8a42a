"""The side of a search that holds the model: one worker, small inputs and outputs.

A worker loads the model, calibration and score orders once; then every request is a ratio
vector or a feature prefix in, and numbers out. The search driver talks to workers through a
pool (dsa/pool.py): in this process, or as Ray actors, one per GPU or per share of CPU cores.
"""
from __future__ import annotations

import os

import torch

from evaluators.perplexity import perplexity
from evaluators.workbench import BenchConfig, Workbench

from .allocate import baseline_ratios
from .fitness import LocalEvaluator
from .pipeline import Node, prefix_values


def block_mats_of(bench: Workbench):
    """Operand name -> block matrices, as the search space's reductions expect them."""
    def get(operand: str, index: int):
        return bench.dense_weights(index) if operand == "weight" else bench.block_scores(index, operand)
    return get


def features_of(bench: Workbench):
    """A prefix's per-block values, computed on this bench's dense matrices."""
    return lambda node: prefix_values(node, block_mats_of(bench), len(bench.blocks))


class Worker:
    def __init__(self, bench: BenchConfig | Workbench, fitness_text: str, fitness_windows: int,
                 objective: str = "ppl", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)  # the cores this worker was given, not the machine's
        self.bench = bench if isinstance(bench, Workbench) else Workbench(bench)
        self.evaluator = LocalEvaluator(self.bench, fitness_text, fitness_windows, objective)
        self.features_fn = features_of(self.bench)

    def info(self) -> dict:
        return {"sizes": self.bench.sizes.tolist(), "n_blocks": len(self.bench.blocks),
                "tokens_per_window": int(self.evaluator.windows.shape[1] - 1), "pid": os.getpid(),
                "device": str(self.bench.loaded.device), "threads": torch.get_num_threads()}

    def features(self, node: Node) -> list[float]:
        return self.features_fn(node)

    def losses(self, ratios: list[float], indices: list[int]) -> list[float]:
        return self.evaluator.losses(ratios, indices)

    def baseline_ratios(self, method: str, sparsity: float) -> list[float]:
        return baseline_ratios(method, self.bench, sparsity)[0]

    def validation_ppl(self, ratios: list[float]) -> float:
        """Perplexity on all fitness windows, whatever the search's objective."""
        self.bench.pruner.prune(ratios)
        return perplexity(self.bench.loaded.model, self.evaluator.windows, self.bench.config.batch_size)

    def perplexities(self, ratios: list[float], texts: list[str], windows: int) -> dict[str, float]:
        """Perplexity on each report text, pruned with the cached scores as in the search."""
        self.bench.pruner.prune(ratios)
        return {text: self.bench.perplexity(text, windows) for text in texts}

    def memory(self) -> dict[str, int]:
        """Bytes held: the model, the dense copy of its prunable weights, and their score orders."""
        def size(tensors):
            return sum(t.numel() * t.element_size() for t in tensors)
        pruner = self.bench.pruner
        return {"params": sum(p.numel() for p in self.bench.loaded.model.parameters()),
                "prunable_params": sum(t.numel() for t in pruner.dense.values()),
                "model_bytes": size(self.bench.loaded.model.parameters()),
                "dense_copy_bytes": size(pruner.dense.values()), "orders_bytes": size(pruner.orders.values())}

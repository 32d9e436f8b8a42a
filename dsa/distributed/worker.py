"""A search worker: one evaluation session (evaluators/session.py) behind small requests.

The worker adds only what the search asks of a model: a function prefix's per-block features
and the baselines' ratios. The search driver talks to workers through a pool (pool.py): in this
process, or as Ray actors, one per GPU or per share of CPU cores.
"""
from __future__ import annotations

import os

import torch

from dsa.allocation.allocate import BaselineOptions, baseline_ratios, block_alphas
from dsa.allocation.matrices import MatrixUnits
from dsa.core.constants import alpha_eps_for
from dsa.core.guards import DEFAULT_GUARDS, MOVED_GUARDS
from dsa.functions.codec import node_name
from dsa.functions.pipeline import Node, features_on, prefix_key
from evaluators.session import EvaluationSession
from evaluators.calibrated import ModelConfig, CalibratedModel

# Prefixes whose per-block values are exactly AlphaPruning's block metric (mean PL_Alpha_Hill of
# the dense weights), so the worker reads them from the same cache as the baseline.
_PLAIN_WEIGHTS = f"{node_name('pre2', 'noop')}({node_name('pre1', 'noop')}(weight))"
CACHED_ALPHAS = {f"{node_name('red', 'alpha_' + mode)}({_PLAIN_WEIGHTS})": mode for mode in ("peak", "mid")}


class Worker:
    def __init__(self, calibrated: ModelConfig | CalibratedModel, fitness_text: str, fitness_windows: int,
                 objective: str = "ppl", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)  # the cores this worker was given, not the machine's
        self.session = EvaluationSession(calibrated, fitness_text, fitness_windows, objective)
        self.units = MatrixUnits.of(self.session.calibrated.blocks)
        self.features_fn = {"block": features_on(self.session.block_matrices, self.session.n_blocks),
                            "matrix": features_on(self.session.block_matrices, self.session.n_blocks, self.units)}

    def info(self) -> dict:
        return {"model": self.session.calibrated.config.model, "sizes": self.session.sizes.tolist(),
                "tokens_per_window": self.session.tokens_per_window, "pid": os.getpid(),
                "units": self.units.as_dict(),  # its matrices, for per-matrix functions
                "device": str(self.session.calibrated.loaded.device),
                # Ray gives a GPU actor exactly its own device(s); the model then goes to cuda:0 of those.
                "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def features(self, node: Node, guards_moved: bool = False, granularity: str = "block") -> list[float]:
        """A prefix's per-block (`granularity="matrix"`: per-matrix) values; with `guards_moved`,
        computed with the ops' guard constants moved (dsa.functions.guards), for the guard check."""
        key = prefix_key(node)
        if key in CACHED_ALPHAS and granularity == "block":  # AlphaPruning's metric: its disk cache, SVDs once
            return block_alphas(self.session.calibrated, CACHED_ALPHAS[key]).tolist()
        return self.features_fn[granularity](node, guards=MOVED_GUARDS if guards_moved else DEFAULT_GUARDS)

    def losses(self, ratios: list[float], indices: list[int], form: str = "cached") -> list[float]:
        return self.session.window_losses(ratios, indices, form)

    def baseline(self, method: str, sparsity: float, atp_step: float | None = None) -> tuple[list, list | None]:
        """A baseline's (ratios, per-block metric), with AlphaPruning's eps for this metric."""
        options = BaselineOptions(alpha_eps=alpha_eps_for(self.session.calibrated.config.metric), atp_step=atp_step)
        return baseline_ratios(method, self.session.calibrated, sparsity, options)

    def validation_ppl(self, ratios: list[float]) -> float:
        return self.session.fitness_perplexity(ratios)

    def final_perplexities(self, ratios: list[float], pruner: str, texts: list[str], windows: int) -> dict[str, float]:
        """Perplexity on each text after pruning with a final pruner (sequential Wanda: the truth)."""
        self.session.prune(ratios, pruner)
        return self.session.perplexities(texts, windows)

    def final_window_log_perplexities(self, ratios: list[float], pruner: str, texts: list[str],
                                      windows: int) -> dict[str, list[float]]:
        """Each window's log-perplexity on each text after pruning with a final pruner (for a paired
        choice between amplitudes)."""
        self.session.prune(ratios, pruner)
        return self.session.window_log_perplexities(texts, windows)

    def dense_perplexities(self, texts: list[str], windows: int) -> dict[str, float]:
        """Perplexity of the unpruned model on each text: the report's reference row."""
        self.session.restore()
        return self.session.perplexities(texts, windows)

    def memory(self) -> dict[str, int]:
        return self.session.memory()

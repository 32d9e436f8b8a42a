"""The model side of every evaluation, in one place: prune at ratios, measure, restore.

A session owns a CalibratedModel (model, calibration, cached score orders) and answers small
requests: ratio vectors in, numbers out. The search's Ray workers wrap one session each;
apply.py and bench/ use one directly.

Two ways to prune:
- `prune_cached(ratios)`: the search's fast form (dense-activation scores, cached per-row
  orders, incremental re-pruning);
- `prune(ratios, pruner, ...)`: the final pruners (sequential Wanda or SparseGPT, magnitude),
  as the papers prune.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dsa.core.errors import UserError
from .perplexity import perplexity, window_nll
from .pruners import PRUNERS, WANDA_FORMS  # noqa: F401 (the CLIs' choices, importable from here)
from .pruners import pruner_named, sequential_prune, zero_fraction
from .pruners.base import is_per_matrix
from .calibrated import ModelConfig, CalibratedModel

OBJECTIVES = ("ppl", "kl")
OPERANDS = ("wanda", "magnitude", "weight")  # what a block's matrices can be: scores or weights


class EvaluationSession:
    """One model, loaded once, and everything measured on it.

    `fitness_text` and `fitness_windows` name the validation windows the search selects on
    (none for apply.py); `objective` is what a window's loss is: NLL, or KL to the dense model.
    """

    def __init__(self, calibrated: ModelConfig | CalibratedModel, fitness_text: str | None = None,
                 fitness_windows: int = 0, objective: str = "ppl"):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}")
        self.calibrated = calibrated if isinstance(calibrated, CalibratedModel) else CalibratedModel(calibrated)
        self.objective = objective
        self.windows = self.calibrated.windows(fitness_text, fitness_windows) if fitness_text else None
        self.dense_logprobs = self._logprobs_of_windows() if objective == "kl" else None

    # ---- what the model is ------------------------------------------------------------------
    @property
    def sizes(self) -> torch.Tensor:
        return self.calibrated.sizes

    @property
    def n_blocks(self) -> int:
        return len(self.calibrated.blocks)

    @property
    def tokens_per_window(self) -> int:
        return int(self.windows.shape[1] - 1)

    def block_matrices(self, operand: str, index: int) -> list[torch.Tensor]:
        """Block `index`'s dense matrices as an allocation function sees them (scores or weights)."""
        if operand == "weight":
            return self.calibrated.dense_weights(index)
        return self.calibrated.block_scores(index, operand)

    def memory(self) -> dict[str, int]:
        """Bytes held: the model, the dense copy of its prunable weights, and their score orders."""
        parameters = list(self.calibrated.loaded.model.parameters())
        return {"params": sum(p.numel() for p in parameters),
                "model_bytes": sum(p.numel() * p.element_size() for p in parameters), **self.calibrated.pruner.memory()}

    # ---- pruning ------------------------------------------------------------------------------
    def prune_cached(self, ratios: Sequence[float]) -> None:
        """The search's form: each row's lowest dense-activation scores, from the cached orders."""
        self.calibrated.pruner.prune(list(ratios))

    def prune(self, ratios: Sequence[float], pruner: str = "wanda", nm: tuple[int, int] | None = None,
              wanda_form: str = "sequential") -> float:
        """Restore the dense weights, prune with a final pruner, return the achieved sparsity.

        Wanda `sequential` propagates calibration activations through the pruned blocks (the
        paper's procedure); `cached` uses the dense-model scores the search uses. SparseGPT and
        ALPS are always sequential (their weight updates change later inputs). `magnitude` drops each matrix's
        smallest weights (one threshold per matrix, as the reference code); `magnitude-row` the
        smallest of each row (from the cached per-row orders, metric magnitude).
        """
        rule = pruner_named(pruner, wanda_form)  # the registry in evaluators/pruners/
        calibrated = self.calibrated
        if rule.metric and calibrated.config.metric != rule.metric:
            raise UserError(f"--pruner {pruner} needs --metric {rule.metric} (the score orders it prunes by)")
        if len(ratios) != self.n_blocks:
            raise UserError(f"got {len(ratios)} ratios for {self.n_blocks} blocks")
        if nm and is_per_matrix(ratios):
            raise UserError(f"{nm[0]}:{nm[1]} prunes every matrix to the same pattern: per-matrix ratios do not apply")
        calibrated.pruner.restore()
        if rule.sequential:
            sequential_prune(calibrated.loaded, calibrated.calib, ratios, rule, nm, calibrated.config.batch_size)
            calibrated.pruner.mark_modified()
        else:
            rule.prune_model(calibrated.pruner, ratios, nm)
        return zero_fraction(calibrated.loaded)

    def restore(self) -> None:
        self.calibrated.pruner.restore()

    # ---- measuring ----------------------------------------------------------------------------
    @torch.no_grad()
    def window_losses(self, ratios: Sequence[float], indices: Sequence[int], form: str = "cached") -> list[float]:
        """Prune, then the summed loss of each requested fitness window (NLL, or KL to dense).

        `form` "cached": the search's incremental Wanda from the dense-model orders (seconds);
        "sequential": the final pruner, sequential Wanda (a calibration pass per candidate).
        """
        if form == "cached":
            self.prune_cached(ratios)
        else:
            self.prune(ratios, "wanda", wanda_form=form)  # checks the form's name
        windows = self.windows[list(indices)]
        if self.objective == "ppl":
            return self.calibrated.window_nll(windows).tolist()
        out = []
        for index, window in zip(indices, windows):
            logprobs = self._logprobs(window)
            out.append(F.kl_div(logprobs, self.dense_logprobs[index], log_target=True, reduction="sum").item())
        return out

    def fitness_perplexity(self, ratios: Sequence[float]) -> float:
        """Perplexity on all fitness windows, pruned as in the search, whatever the objective."""
        self.prune_cached(ratios)
        return perplexity(self.calibrated.loaded.model, self.windows, self.calibrated.config.batch_size)

    def perplexities(self, texts: Sequence[str], windows: int, label: str = "") -> dict[str, float]:
        """Perplexity of the model as it is now on each named text."""
        return {text: self.calibrated.perplexity(text, windows, progress=f"{label} {text}".strip()) for text in texts}

    def window_log_perplexities(self, texts: Sequence[str], windows: int, label: str = "") -> dict[str, list[float]]:
        """Each window's log-perplexity (mean next-token NLL) of the model as it is now, per named text:
        what a paired comparison of two prunes over the same windows needs."""
        out = {}
        for text in texts:
            ids = self.calibrated.windows(text, windows)
            nll = window_nll(self.calibrated.loaded.model, ids, self.calibrated.config.batch_size, f"{label} {text}".strip())
            out[text] = (nll / (ids.shape[1] - 1)).tolist()
        return out

    @torch.no_grad()
    def _logprobs(self, window: torch.Tensor) -> torch.Tensor:
        model = self.calibrated.loaded.model
        return torch.log_softmax(model(window[None].to(self.calibrated.loaded.device), use_cache=False).logits[0, :-1].float(), -1)

    def _logprobs_of_windows(self) -> list[torch.Tensor]:
        self.calibrated.pruner.restore()
        return [self._logprobs(w) for w in self.windows]


"""The protocol's requests answered in this process, on one loaded model (apply.py, bench/)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from dsa.allocation.allocate import BaselineOptions, baseline_ratios
from dsa.allocation.matrices import MatrixUnits
from dsa.functions.pipeline import FeatureMemo
from evaluators.session import EvaluationSession

from .measurer import Read


class SessionMeasurer:
    """A Measurer over an EvaluationSession: its model is the only one, whatever name a request
    gives. `pruner`, `nm` and `wanda_form` are the final pruner's; `options` the baselines'
    constants (ATP's step comes with each request)."""

    def __init__(self, session: EvaluationSession, pruner: str = "wanda", nm: tuple[int, int] | None = None,
                 wanda_form: str = "sequential", options: BaselineOptions | None = None):
        self.session = session
        self.pruner, self.nm, self.wanda_form = pruner, nm, wanda_form
        self.options = options or BaselineOptions()
        self._memos = {}  # granularity (matrix?) -> its memo

    @property
    def model(self) -> str:
        return self.session.calibrated.config.model

    def prune(self, ratios: Sequence[float]) -> float:
        """Prune with the final pruner (from the dense weights); the achieved sparsity."""
        return self.session.prune(ratios, self.pruner, self.nm, self.wanda_form)

    def read(self, read: Read, label: str = "") -> dict:
        """One read of the model as it is now."""
        if read.per_window:
            return self.session.window_log_perplexities(read.texts, read.windows, label)
        return self.session.perplexities(read.texts, read.windows, label)

    def measure(self, routed, reads, desc: str = "") -> list[list[dict]]:
        out = []
        for _, ratios in routed:
            self.prune(ratios)
            out.append([self.read(read, desc) for read in reads])
        return out

    def baseline(self, model: str, method: str, sparsity: float, atp_step: float | None = None):
        options = self.options if atp_step is None else dataclasses.replace(self.options, atp_step=atp_step)
        return baseline_ratios(method, self.session.calibrated, sparsity, options)

    def dense(self, model: str, texts: Sequence[str], windows: int) -> dict[str, float]:
        self.session.restore()
        return self.session.perplexities(texts, windows, "dense")

    def sizes(self, model: str):
        return self.session.sizes

    def features(self, model: str, matrix: bool = False) -> FeatureMemo:
        if matrix not in self._memos:
            units = MatrixUnits.of(self.session.calibrated.blocks) if matrix else None
            self._memos[matrix] = FeatureMemo.over(self.session.block_matrices, self.session.n_blocks, units=units)
        return self._memos[matrix]

    def prune_and_measure(self, ratios: Sequence[float], texts: Sequence[str], windows: int, label: str,
                          zero_shot=None) -> dict:
        """Prune, then each text's perplexity (and zero-shot accuracy with an evaluators.zeroshot
        ZeroShot); the model stays pruned (for fine-tuning or saving)."""
        achieved = self.prune(ratios)
        result = {"ratios": list(ratios), "achieved_sparsity": achieved,
                  "ppl": self.session.perplexities(texts, windows, label)}
        if zero_shot is not None:
            loaded = self.session.calibrated.loaded
            result["zero_shot"] = zero_shot.evaluate(loaded.model, loaded.tokenizer)
        return result

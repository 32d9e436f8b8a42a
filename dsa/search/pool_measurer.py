"""The protocol's requests (dsa/protocol/measurer.py) answered by the search's worker pool: each
request goes to a worker holding its model, a batch to all of them at once."""
from __future__ import annotations

import torch

from dsa.allocation.matrices import MatrixUnits
from dsa.functions.pipeline import FeatureMemo


class PoolMeasurer:
    """A Measurer over a pool (dsa/distributed/pool.py); `pruner` is the report's final pruner;
    `default` the model a request without one goes to (a single-model search's)."""

    def __init__(self, pool, pruner: str, default: str | None = None):
        self.pool = pool
        self.pruner = pruner
        self.default = default or pool.groups[0]
        self._sizes, self._memos = {}, {}

    def measure(self, routed, reads, desc: str = "") -> list[list[dict]]:
        """One batch per read: a read after the first prunes again (the search's reads are one each)."""
        models = sorted({model for model, _ in routed})
        desc = desc or f"{self.pruner} on {', '.join(models)}"
        columns = []
        for read in reads:
            method = "final_window_log_perplexities" if read.per_window else "final_perplexities"
            jobs = [(model, (ratios, self.pruner, list(read.texts), read.windows)) for model, ratios in routed]
            columns.append(self.pool.map_routed(method, jobs, desc))
        return [list(row) for row in zip(*columns)]

    def baseline(self, model: str, method: str, sparsity: float, atp_step: float | None = None):
        return tuple(self.pool.call("baseline", method, sparsity, atp_step, group=model))

    def dense(self, model: str, texts, windows: int) -> dict[str, float]:
        return self.pool.call("dense_perplexities", list(texts), windows, group=model)

    def sizes(self, model: str) -> torch.Tensor:
        if model not in self._sizes:
            self._sizes[model] = torch.tensor(self.pool.call("info", group=model)["sizes"], dtype=torch.float64)
        return self._sizes[model]

    def features(self, model: str, matrix: bool = False) -> FeatureMemo:
        granularity = "matrix" if matrix else "block"
        if (model, granularity) not in self._memos:
            pool = self.pool
            units = MatrixUnits.from_dict(pool.call("info", group=model)["units"]) if matrix else None
            self._memos[model, granularity] = FeatureMemo(
                lambda node: pool.call("features", node, False, granularity, group=model), units=units)
        return self._memos[model, granularity]

    def validation_perplexities(self, routed) -> list[float]:
        """Perplexity on the fitness windows, pruned as the search prunes (its cached form)."""
        return self.pool.map_routed("validation_ppl", [(model, (ratios,)) for model, ratios in routed])


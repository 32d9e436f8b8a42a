"""One search from start to report: workers (the model) -> evolution (the driver) -> test-split report.

Selection only ever sees the fitness (validation) windows; the report texts (test splits) are read
after the loop has finished.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dsa.distributed.pool import open_pool
from dsa.functions.files import from_root
from evaluators.workbench import BenchConfig, Workbench

from .evolution import Search, SearchConfig, SearchState
from .fitness import PoolEvaluator
from .report import write_report

REPORT_BASELINES = ("uniform", "owl", "alphapruning")


@dataclass(frozen=True)
class RunConfig:
    fitness_text: str = "wiki/validation"
    objective: str = "ppl"
    report_texts: tuple = ("wiki/test", "ptb/test")
    report_windows: int = 8
    name: str = "run"
    results_dir: str = "results"
    checkpoint_dir: str = "checkpoints"
    bench: BenchConfig = field(default_factory=BenchConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return cls(**{**data, "report_texts": tuple(data["report_texts"]),
                      "bench": BenchConfig(**data["bench"]), "search": SearchConfig(**data["search"])})


def make_search(pool, config: RunConfig, state: SearchState | None = None) -> Search:
    info = pool.call("info")
    evaluator = PoolEvaluator(pool, info["tokens_per_window"], config.objective)
    features = lambda node: pool.call("features", node)  # noqa: E731 - computed where the model is
    return Search(config.search, torch.tensor(info["sizes"], dtype=torch.float64), features, evaluator, state,
                  Path(config.checkpoint_dir) / config.name, extra={"run": config.as_dict()})


def finish(search: Search, pool, config: RunConfig) -> dict:
    """Evaluate the best function and the baselines on validation and test; write results/<name>/."""
    best = search.best()
    allocations = {"best": search.ratios_of(best)}
    for name in REPORT_BASELINES:
        allocations[name] = pool.call("baseline_ratios", name, config.search.sparsity)
    if config.objective == "ppl":  # the fitness itself, cached for the best and the seeds
        val = dict(zip(allocations, search.fitness(list(allocations.values()), config.search.fitness_windows)))
    else:
        val = dict(zip(allocations, pool.map("validation_ppl", [(r,) for r in allocations.values()])))
    # The test texts are read here, after selection has ended, and nowhere else.
    jobs = [(ratios, list(config.report_texts), config.report_windows) for ratios in allocations.values()]
    test = dict(zip(allocations, pool.map("perplexities", jobs, "test perplexity")))
    state = search.state
    counters = {"evaluations": state.evaluations, "windows_evaluated": state.windows_evaluated,
                "cache_hits": state.cache_hits, "feature_cache_hits": state.feature_cache_hits,
                "invalid_functions": state.invalid, "distinct_features": len(state.features),
                "generations": state.generation, "wall_s": round(state.wall_s, 1), "history": state.history,
                "workers": {"kind": type(pool).__name__, "count": pool.size,
                            "startup_s": round(getattr(pool, "startup_s", 0.0), 1)}}
    label = "random search" if config.search.random_search else "evolution"
    return write_report(Path(config.results_dir) / config.name, from_root(search.root(best)), allocations, val, test,
                        state.history, counters, config.as_dict(), label)


def run(config: RunConfig, state: SearchState | None = None, bench: Workbench | None = None,
        stop_after: int | None = None, workers: int | None = 0, address: str | None = None) -> dict | None:
    """Run or resume a search; returns the report, or None when stopped early by `stop_after`.

    A loaded `bench`, or `workers=0`, evaluates in this process; otherwise `workers` Ray actors
    (None: one per GPU, else one using every CPU core); `address` joins a cluster.
    """
    start = time.perf_counter()
    worker_args = (config.bench, config.fitness_text, config.search.fitness_windows, config.objective)
    pool = open_pool(worker_args, workers, address, config.bench.device, bench)
    try:
        search = make_search(pool, config, state)
        search.run(stop_after=stop_after)
        if search.state.generation < config.search.generations:
            return None
        report = finish(search, pool, config)
    finally:
        pool.close()
    report["total_wall_s"] = round(time.perf_counter() - start, 1)
    return report

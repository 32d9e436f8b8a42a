"""One search from start to report: workbench -> evaluator -> evolution -> test-split report.

Selection only ever sees the fitness (validation) windows; the report texts (test splits) are read
after the loop has finished.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evaluators.workbench import BenchConfig, Workbench

from .allocate import baseline_ratios
from .evolution import Search, SearchConfig, SearchState
from .fitness import LocalEvaluator
from .function import from_root
from .report import test_perplexities, write_report

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


def block_mats_of(bench: Workbench):
    """Operand name -> block matrices, as the search space's reductions expect them."""
    def get(operand: str, index: int):
        return bench.dense_weights(index) if operand == "weight" else bench.block_scores(index, operand)
    return get


def make_search(bench: Workbench, config: RunConfig, state: SearchState | None = None, evaluator=None) -> Search:
    evaluator = evaluator or LocalEvaluator(bench, config.fitness_text, config.search.fitness_windows, config.objective)
    return Search(config.search, bench.sizes, len(bench.blocks), block_mats_of(bench), evaluator, state,
                  Path(config.checkpoint_dir) / config.name, extra={"run": config.as_dict()})


def validation_ppl(search: Search, bench: Workbench, config: RunConfig, ratios) -> float:
    if config.objective == "ppl":
        return search.full_fitness(ratios)  # already cached for the seeds and the best
    bench.pruner.prune(ratios)
    windows = search.evaluator.windows
    return math.exp(bench.window_nll(windows).sum().item() / (windows.shape[0] * (windows.shape[1] - 1)))


def finish(search: Search, bench: Workbench, config: RunConfig) -> dict:
    """Evaluate the best function and the baselines on validation and test; write results/<name>/."""
    best = search.best()
    allocations = {"best": search.ratios_of(best)}
    for name in REPORT_BASELINES:
        allocations[name] = baseline_ratios(name, bench, config.search.sparsity)[0]
    val = {name: validation_ppl(search, bench, config, ratios) for name, ratios in allocations.items()}
    test = test_perplexities(bench, allocations, list(config.report_texts), config.report_windows)
    state = search.state
    counters = {"evaluations": state.evaluations, "windows_evaluated": state.windows_evaluated,
                "cache_hits": state.cache_hits, "feature_cache_hits": state.feature_cache_hits,
                "invalid_functions": state.invalid, "distinct_features": len(state.features),
                "generations": state.generation, "wall_s": round(state.wall_s, 1), "history": state.history}
    label = "random search" if config.search.random_search else "evolution"
    return write_report(Path(config.results_dir) / config.name, from_root(search.root(best)), allocations, val, test,
                        state.history, counters, config.as_dict(), label)


def run(config: RunConfig, state: SearchState | None = None, bench: Workbench | None = None,
        stop_after: int | None = None) -> dict | None:
    """Run or resume a search; returns the report, or None when stopped early by `stop_after`."""
    start = time.perf_counter()
    bench = bench or Workbench(config.bench)
    search = make_search(bench, config, state)
    search.run(stop_after=stop_after)
    if search.state.generation < config.search.generations:
        return None
    report = finish(search, bench, config)
    report["total_wall_s"] = round(time.perf_counter() - start, 1)
    return report

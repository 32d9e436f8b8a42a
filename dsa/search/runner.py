"""One search from start to report: workers (the models) -> evolution (the driver) -> report.

Selection only ever sees the fitness (validation) windows of the training models; the report
texts (test splits) and the held-out models are read after the loop has finished. The report
gives the search's own form (validation fitness, cached Wanda) and the final pruner's truth
(sequential Wanda by default) for the best and every baseline, and how far the two agree; how it
measures is dsa/protocol, through the workers (pool_measurer.py).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dsa.allocation.matrices import MatrixUnits
from dsa.core.constants import alpha_eps_for
from dsa.distributed.pool import open_pool
from dsa.functions.files import from_root
from dsa.protocol.atp import choose_atp
from dsa.protocol.grids import Choosing
from dsa.protocol.measurer import final_perplexities
from dsa.protocol.replay import replay
from dsa.protocol.score import rank_agreement
from evaluators.calibrated import ModelConfig, CalibratedModel, check_config, check_text

from . import checkpoint
from .evolution import Search, SearchConfig, SearchState, Target
from .final_select import final_select
from .fitness import PoolEvaluator, ratio_key
from .perblock import PerBlockSearch
from .pool_measurer import PoolMeasurer
from .report import write_report

REPORT_BASELINES = ("uniform", "owl", "alphapruning", "dsa-published", "dlp", "atp")


@dataclass(frozen=True)
class RunConfig:
    fitness_text: str = "wiki/validation"
    objective: str = "ppl"
    report_texts: tuple = ("wiki/test", "ptb/test")
    report_windows: int = 8
    name: str = "run"
    results_dir: str = "results"
    checkpoint_dir: str = "checkpoints"
    model_config: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    models: tuple = ()          # a multi-model search's models; empty: model_config.model alone
    holdout: tuple = ()         # models replayed after the search only, never read during selection
    final_pruner: str = "wanda"  # the report's truth: sequential Wanda, as the papers prune
    rank_check: int = 4         # distinct final-population allocations re-measured with the final pruner
    final_select: int = 0       # >= 2: the reported function is the best of this many under the final pruner
    report_baselines: tuple = REPORT_BASELINES  # the baselines the report prunes beside the best
    holdout_tune: tuple = ()    # texts of each held-out model the function's amplitude and ATP's are chosen on
    holdout_tune_windows: int = 16  # its windows: on 4, noise chose a worse amplitude on Gemma-3
    holdout_tune_z: float = 0.0  # > 0: keep the training constant unless beaten by this many standard errors

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = cls.upgrade(data)
        tuples = {k: tuple(data.get(k, ())) for k in ("report_texts", "models", "holdout")}
        tuples["report_baselines"] = tuple(data.get("report_baselines", REPORT_BASELINES))
        tune = data.get("holdout_tune", ())
        tuples["holdout_tune"] = (tune,) if tune and isinstance(tune, str) else tuple(tune or ())  # older: one text
        search = {**data["search"], **{k: tuple(data["search"].get(k, ())) for k in ("sparsities", "operands", "seed_functions")}}
        return cls(**{**data, **tuples, "model_config": ModelConfig(**data["model_config"]), "search": SearchConfig(**search)})

    @staticmethod
    def upgrade(data: dict) -> dict:
        """A checkpoint's run settings written before the model settings were called model_config."""
        if isinstance(data, dict) and "bench" in data and "model_config" not in data:
            data = {("model_config" if k == "bench" else k): v for k, v in data.items()}
        return data

    def model_names(self) -> tuple:
        return self.models or (self.model_config.model,)

    def sparsities(self) -> tuple:
        return self.search.sparsities or (self.search.sparsity,)

    def worker_args(self, models) -> dict[str, tuple]:
        """Worker arguments per model: the same data and settings, that model."""
        return {m: (dataclasses.replace(self.model_config, model=m), self.fitness_text, self.search.fitness_windows,
                    self.objective) for m in models}


def make_search(pool, config: RunConfig, state: SearchState | None = None) -> Search | PerBlockSearch:
    where = Path(config.checkpoint_dir) / config.name
    infos = {m: pool.call("info", group=m) for m in config.model_names()}
    evaluator = PoolEvaluator(pool, {m: info["tokens_per_window"] for m, info in infos.items()}, config.objective)
    if config.search.mode == "per-block":
        model = config.model_names()[0]
        return PerBlockSearch(config.search, torch.tensor(infos[model]["sizes"], dtype=torch.float64), evaluator,
                              state, where, extra={"run": config.as_dict()})
    single = len(infos) == 1 and len(config.sparsities()) == 1
    granularity = config.search.granularity
    units = {m: MatrixUnits.from_dict(info["units"]) if granularity == "matrix" else None for m, info in infos.items()}
    targets = [Target(m, s, torch.tensor(info["sizes"], dtype=torch.float64) if units[m] is None else units[m].sizes,
                      _remote_features(pool, m, granularity=granularity), "" if single else f"{m}@{s:g}|",
                      _remote_features(pool, m, guards_moved=True, granularity=granularity), units[m])
               for m, info in infos.items() for s in config.sparsities()]
    return Search(config.search, None, None, evaluator, state, where, extra={"run": config.as_dict()}, targets=targets,
                  seed_eps=alpha_eps_for(config.model_config.metric))


def _remote_features(pool, model: str, guards_moved: bool = False, granularity: str = "block"):
    return lambda node: pool.call("features", node, guards_moved, granularity, group=model)  # where the model is


def target_allocations(search, measurer, config: RunConfig, index: int, best, atp: dict | None) -> dict:
    """Best and baselines on one trained target: ratios and block metric."""
    target = search.targets[index]
    model, sparsity = target.group or config.model_names()[0], target.sparsity
    if isinstance(search, PerBlockSearch):
        allocations = {"best": (search.ratios_of(best), None)}
    else:
        allocations = {"best": (search.ratios_of(best, index), search.importance_of(best, index))}
    for name in config.report_baselines:
        allocations[name] = measurer.baseline(model, name, sparsity, atp["step"] if atp else None)
    return {"model": model, "sparsity": sparsity, "allocations": allocations, "atp": atp}


def report_atp_choices(search, measurer, config: RunConfig) -> list[dict | None]:
    """ATP's lambda per trained target, chosen as apply.py compare chooses it: on the fitness text,
    the report's windows, with the final pruner (dsa/protocol/atp.py). Only where ATP is reported
    or a held-out model's tuning starts from the training lambda: each grid point is a prune."""
    if "atp" not in config.report_baselines and not config.holdout_tune:
        return [None] * len(search.targets)
    targets = [(t.group or config.model_names()[0], t.sparsity) for t in search.targets]
    return choose_atp(measurer, targets, Choosing((config.fitness_text,), config.report_windows))


def target_reports(search, measurer, config: RunConfig, best) -> list[dict]:
    """Every trained target's report: validation in the search's form (the fitness, cached for the
    best and the seeds) and every text with the final pruner. Each step sends all targets' jobs
    in one batch, so each model's workers work while the other models' workers do."""
    windows = config.search.fitness_windows
    atps = report_atp_choices(search, measurer, config)
    prepared = [target_allocations(search, measurer, config, i, best, atp) for i, atp in enumerate(atps)]
    ratios = [[r for r, _ in p["allocations"].values()] for p in prepared]
    routed = [(p["model"], r) for p, rs in zip(prepared, ratios) for r in rs]
    if config.objective == "ppl":
        vals = search.fitness_on(list(enumerate(ratios)), windows)
    else:
        flat = iter(measurer.validation_perplexities(routed))
        vals = [[next(flat) for _ in rs] for rs in ratios]
    texts = report_texts(config)
    final = iter(final_perplexities(measurer, routed, texts, config.report_windows))
    # The unpruned model on the same texts and windows: a pruned row far above it is the pruning's
    # cost, a dense row far above the model's known perplexity a loading fault.
    dense = {model: measurer.dense(model, texts, config.report_windows)
             for model in dict.fromkeys(p["model"] for p in prepared)}
    tables = []
    for index, (p, val) in enumerate(zip(prepared, vals)):
        entries = {name: {"ratios": r, "block_metric": m, "val_fitness": v, "final": next(final)}
                   for (name, (r, m)), v in zip(p["allocations"].items(), val)}
        known = {ratio_key(e["ratios"]): e["final"][config.fitness_text] for e in entries.values()}
        tables.append({"model": p["model"], "sparsity": p["sparsity"], "trained": True, "allocations": entries,
                       "dense": dense[p["model"]], "atp": p["atp"],
                       "forms": forms_agreement(search, measurer, config, index, known)})
    return tables


def report_texts(config: RunConfig) -> list[str]:
    """The texts the report measures with the final pruner: validation (more windows than the
    fitness's) and the test texts, read here, after selection has ended, and nowhere else."""
    return [config.fitness_text, *config.report_texts]


def forms_agreement(search, measurer, config: RunConfig, index: int, known: dict | None = None) -> dict:
    """Spearman rank correlation between the search's fitness (cached form) and the final pruner's
    validation perplexity over the final population's best distinct allocations.

    `known`: final validation perplexities already measured (ratio key -> value), e.g. the best and
    the seeds among the baselines, so only the others are pruned again."""
    if isinstance(search, PerBlockSearch) or config.rank_check < 2:
        return {"count": 0}
    target = search.targets[index]
    seen, ratios = set(), []
    for ind in sorted(search.population, key=lambda i: i.fitness.values[0]):
        allocation = search.ratios_of(ind, index)
        if allocation is not None and ratio_key(allocation) not in seen:
            seen.add(ratio_key(allocation))
            ratios.append(allocation)
    ratios = ratios[:config.rank_check]
    if len(ratios) < 2:
        return {"count": len(ratios)}
    cached = search.fitness(ratios, config.search.fitness_windows, target=index)
    known = known or {}
    missing = [r for r in ratios if ratio_key(r) not in known]
    model = target.group or config.model_names()[0]
    measured = final_perplexities(measurer, [(model, r) for r in missing], [config.fitness_text],
                                  config.report_windows, desc="forms")
    known = {**known, **{ratio_key(r): row[config.fitness_text] for r, row in zip(missing, measured)}}
    return rank_agreement(cached, [known[ratio_key(r)] for r in ratios])


def holdout_report(search, config: RunConfig, best, workers, address, atps: list[dict]) -> dict:
    """The best function and every baseline replayed on models the search never saw, final pruner
    only (dsa/protocol/replay.py); `atps`: the training targets' ATP choices."""
    if not config.holdout:
        return {}
    pool = open_pool(config.worker_args(config.holdout), workers, address, config.model_config.device)
    try:
        measurer = PoolMeasurer(pool, config.final_pruner)
        function = from_root(search.root(best))
        tune = Choosing(config.holdout_tune, config.holdout_tune_windows) if config.holdout_tune else None
        texts, out = report_texts(config), {}
        for model in config.holdout:
            dense = measurer.dense(model, texts, config.report_windows)
            for sparsity in config.sparsities():
                out[f"{model}@{sparsity:g}"] = replay(measurer, model, function, sparsity, config.report_baselines,
                                                      atps, texts, config.report_windows, dense, tune,
                                                      config.holdout_tune_z)
        return out
    finally:
        pool.close()


def finish(search, pool, config: RunConfig, workers=0, address=None) -> dict:
    """Evaluate the best and the baselines on every target, and on the held-out models; write results/<name>/."""
    per_block = config.search.mode == "per-block"
    measurer = PoolMeasurer(pool, config.final_pruner, config.model_names()[0])
    if per_block:
        best, selection = search.best(), {"count": 0}
    else:
        best, selection = final_select(search, measurer, config.final_select, config.fitness_text,
                                       config.report_windows, config.model_names()[0])
    # Workers still in the rotation: one lost with its node and not yet dropped does not count.
    workers_info = {"kind": type(pool).__name__, "count": pool.size - len(getattr(pool, "lost", ())),
                    "startup_s": round(getattr(pool, "startup_s", 0.0), 1),
                    "reruns": getattr(pool, "reruns", 0)}  # jobs run again after their worker was lost
    trained = target_reports(search, measurer, config, best)
    tables = {f"{table['model']}@{table['sparsity']:g}": table for table in trained}
    if not per_block and config.holdout:
        pool.release()  # the held-out models take the training models' cores or GPUs
        atps = [table["atp"] for table in trained if table["atp"]]
        tables.update(holdout_report(search, config, best, workers, address, atps))
    label = "per-block search" if per_block else "random search" if config.search.random_search else "evolution"
    function = None if per_block else from_root(search.root(best))
    return write_report(Path(config.results_dir) / config.name, function, tables, search.state.history,
                        _counters(search.state, workers_info, selection), config.as_dict(), label)


def _counters(state, workers_info: dict, selection: dict) -> dict:
    """The search's effort, for the report."""
    return {"evaluations": state.evaluations, "windows_evaluated": state.windows_evaluated,
            "cache_hits": state.cache_hits, "feature_cache_hits": state.feature_cache_hits,
            "invalid_functions": state.invalid, "guard_readers": state.guard_readers,
            "distinct_features": len(state.features),
            "generations": state.generation, "wall_s": round(state.wall_s, 1), "history": state.history,
            "workers": workers_info, "final_select": selection}


def check_inputs(config: RunConfig, here: bool) -> None:
    """Every model's settings and every text, in one line each, before Ray or any model starts
    (a bad one would otherwise fail in each worker, or in the report after the whole search).
    `here`: the workers run on this machine (in this process or an embedded Ray)."""
    for model in (*config.model_names(), *config.holdout):
        check_config(dataclasses.replace(config.model_config, model=model), here)
    if here:
        for text in (config.fitness_text, *config.report_texts, *config.holdout_tune):
            check_text(text)


def run(config: RunConfig, state: SearchState | None = None, calibrated: CalibratedModel | None = None,
        stop_after: int | None = None, workers: int | None = 0, address: str | None = None) -> dict | None:
    """Run or resume a search; returns the report, or None when stopped early by `stop_after`.

    A loaded `calibrated` (of the first model), or `workers=0`, evaluates in this process; otherwise
    `workers` Ray actors per model (None: one per GPU, else one per model sharing the CPU cores);
    `address` joins a cluster.
    """
    start = time.perf_counter()
    check_inputs(config, here=address is None)
    calibrated_models = {config.model_names()[0]: calibrated} if calibrated is not None else None
    with checkpoint.exclusive(Path(config.checkpoint_dir) / config.name):
        pool = open_pool(config.worker_args(config.model_names()), workers, address, config.model_config.device,
                         calibrated_models)
        try:
            search = make_search(pool, config, state)
            search.run(stop_after=stop_after)
            if search.state.generation < config.search.generations:
                return None
            report = finish(search, pool, config, 0 if calibrated is not None else workers, address)
        finally:
            pool.close()
    report["total_wall_s"] = round(time.perf_counter() - start, 1)
    return report

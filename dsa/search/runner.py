"""One search from start to report: workers (the models) -> evolution (the driver) -> report.

Selection only ever sees the fitness (validation) windows of the training models; the report
texts (test splits) and the held-out models are read after the loop has finished. The report
gives the search's own form (validation fitness, cached Wanda) and the final pruner's truth
(sequential Wanda by default) for the best and every baseline, and how far the two agree.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dsa.allocation.baselines import atp_grid
from dsa.core.constants import ATP_LAMBDAS, alpha_eps_for
from dsa.distributed.pool import open_pool
from dsa.functions.files import from_root, map_of, with_map_constant
from dsa.functions.pipeline import FeatureMemo, allocation_ratios, block_values
from dsa.functions.amplitude import choice_score, choose_amplitude, perplexities_of
from dsa.functions.replay import amplitude_grid, function_root
from evaluators.workbench import BenchConfig, Workbench, check_config, check_text

from . import checkpoint
from .evolution import Search, SearchConfig, SearchState, Target
from .final_select import final_select
from .fitness import PoolEvaluator, ratio_key
from .perblock import PerBlockSearch
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
    bench: BenchConfig = field(default_factory=BenchConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    models: tuple = ()          # a multi-model search's models; empty: bench.model alone
    holdout: tuple = ()         # models replayed after the search only, never read during selection
    final_pruner: str = "wanda"  # the report's truth: sequential Wanda, as the papers prune
    rank_check: int = 4         # distinct final-population allocations re-measured with the final pruner
    final_select: int = 0       # >= 2: the reported function is the best of this many under the final pruner
    report_baselines: tuple = REPORT_BASELINES  # the baselines the report prunes beside the best
    holdout_tune: tuple = ()    # texts of each held-out model the function's amplitude and ATP's are chosen on
    holdout_tune_windows: int = 16  # its windows: on 4, noise chose a worse amplitude on Gemma-3 (BENCHMARKS 8)
    holdout_tune_z: float = 0.0  # > 0: keep the training constant unless beaten by this many standard errors

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        tuples = {k: tuple(data.get(k, ())) for k in ("report_texts", "models", "holdout")}
        tuples["report_baselines"] = tuple(data.get("report_baselines", REPORT_BASELINES))
        tune = data.get("holdout_tune", ())
        tuples["holdout_tune"] = (tune,) if tune and isinstance(tune, str) else tuple(tune or ())  # older: one text
        search = {**data["search"], **{k: tuple(data["search"].get(k, ())) for k in ("sparsities", "operands")}}
        return cls(**{**data, **tuples, "bench": BenchConfig(**data["bench"]), "search": SearchConfig(**search)})

    def model_names(self) -> tuple:
        return self.models or (self.bench.model,)

    def sparsities(self) -> tuple:
        return self.search.sparsities or (self.search.sparsity,)

    def worker_args(self, models) -> dict[str, tuple]:
        """Worker arguments per model: the same data and settings, that model."""
        return {m: (dataclasses.replace(self.bench, model=m), self.fitness_text, self.search.fitness_windows,
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
    targets = [Target(m, s, torch.tensor(info["sizes"], dtype=torch.float64), _remote_features(pool, m),
                      "" if single else f"{m}@{s:g}|", _remote_features(pool, m, guards_moved=True))
               for m, info in infos.items() for s in config.sparsities()]
    return Search(config.search, None, None, evaluator, state, where, extra={"run": config.as_dict()}, targets=targets,
                  seed_eps=alpha_eps_for(config.bench.metric))


def _remote_features(pool, model: str, guards_moved: bool = False):
    return lambda node: pool.call("features", node, guards_moved, group=model)  # computed where the model is


def target_allocations(search, pool, config: RunConfig, index: int, best, atp: dict) -> dict:
    """Best and baselines on one trained target: ratios and block metric."""
    target = search.targets[index]
    model, sparsity = target.group or config.model_names()[0], target.sparsity
    if isinstance(search, PerBlockSearch):
        allocations = {"best": (search.ratios_of(best), None)}
    else:
        allocations = {"best": (search.ratios_of(best, index), search.importance_of(best, index))}
    for name in config.report_baselines:
        allocations[name] = tuple(pool.call("baseline", name, sparsity, atp["step"], group=model))
    return {"model": model, "sparsity": sparsity, "allocations": allocations, "atp": atp}


def target_reports(search, pool, config: RunConfig, best) -> list[dict]:
    """Every trained target's report: validation in the search's form (the fitness, cached for the
    best and the seeds) and every text with the final pruner. Each step sends all targets' jobs
    in one batch, so each model's workers work while the other models' workers do."""
    windows = config.search.fitness_windows
    atps = choose_atp_steps(search, pool, windows)
    prepared = [target_allocations(search, pool, config, i, best, atp) for i, atp in enumerate(atps)]
    ratios = [[r for r, _ in p["allocations"].values()] for p in prepared]
    if config.objective == "ppl":
        vals = search.fitness_on(list(enumerate(ratios)), windows)
    else:
        flat = iter(pool.map_routed("validation_ppl", [(p["model"], (r,)) for p, rs in zip(prepared, ratios) for r in rs]))
        vals = [[next(flat) for _ in rs] for rs in ratios]
    final = iter(final_perplexities(pool, config, [(p["model"], r) for p, rs in zip(prepared, ratios) for r in rs]))
    dense = {model: dense_perplexities(pool, config, model) for model in dict.fromkeys(p["model"] for p in prepared)}
    tables = []
    for index, (p, val) in enumerate(zip(prepared, vals)):
        entries = {name: {"ratios": r, "block_metric": m, "val_fitness": v, "final": next(final)}
                   for (name, (r, m)), v in zip(p["allocations"].items(), val)}
        known = {ratio_key(e["ratios"]): e["final"][config.fitness_text] for e in entries.values()}
        tables.append({"model": p["model"], "sparsity": p["sparsity"], "trained": True, "allocations": entries,
                       "dense": dense[p["model"]], "atp": p["atp"], "forms": forms_agreement(search, pool, config, index, known)})
    return tables


def dense_perplexities(pool, config: RunConfig, model: str) -> dict[str, float]:
    """The unpruned model on the report's texts and windows: a pruned row far above it is
    the pruning's cost, a dense row far above the model's known perplexity a loading fault."""
    return pool.call("dense_perplexities", [config.fitness_text, *config.report_texts], config.report_windows,
                     group=model)


def final_perplexities(pool, config: RunConfig, routed: list[tuple[str, list]], texts: list | None = None,
                       windows: int | None = None, per_window: bool = False) -> list[dict]:
    """Every report text (and the fitness text, more windows) after pruning with the final pruner;
    `routed`: (model, ratios) pairs, each pruned by a worker of its model; `texts`: only these, on
    `windows` windows each (default: the report's); `per_window`: each window's log-perplexity
    instead of each text's perplexity.

    The test texts are read here, after selection has ended, and nowhere else."""
    texts = texts or [config.fitness_text, *config.report_texts]
    # An allocation equal to another on the same model to 1e-9 (a searched ramp that is ATP's)
    # is pruned once: the final pruner is deterministic, and keeps whole weights, given the ratios.
    keys = [(model, tuple(round(float(x), 9) for x in r)) for model, r in routed]
    unique = list(dict.fromkeys(keys))
    first = {key: routed[keys.index(key)] for key in unique}
    jobs = [(model, (r, config.final_pruner, texts, windows or config.report_windows)) for model, r in first.values()]
    models = sorted({model for model, _ in routed})
    method = "final_window_log_perplexities" if per_window else "final_perplexities"
    measured = pool.map_routed(method, jobs, f"{config.final_pruner} on {', '.join(models)}")
    by_key = dict(zip(unique, measured))
    return [by_key[key] for key in keys]


def forms_agreement(search, pool, config: RunConfig, index: int, known: dict | None = None) -> dict:
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
    jobs = [(r, config.final_pruner, [config.fitness_text], config.report_windows) for r in missing]
    measured = pool.map("final_perplexities", jobs, "forms", group=target.group or config.model_names()[0])
    known = {**known, **{ratio_key(r): row[config.fitness_text] for r, row in zip(missing, measured)}}
    final = [known[ratio_key(r)] for r in ratios]
    return {"count": len(ratios), "spearman": spearman(cached, final), "cached_fitness": cached,
            "final_validation": final}


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, index in enumerate(order):
            out[index] = float(rank)
        return out
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def holdout_report(search, config: RunConfig, best, workers, address) -> dict:
    """The best function and every baseline replayed on models the search never saw, final pruner only."""
    if not config.holdout:
        return {}
    pool = open_pool(config.worker_args(config.holdout), workers, address, config.bench.device)
    try:
        out = {}
        for model in config.holdout:
            info = pool.call("info", group=model)
            sizes = torch.tensor(info["sizes"], dtype=torch.float64)
            dense = dense_perplexities(pool, config, model)
            for sparsity in config.sparsities():
                memo = FeatureMemo(_remote_features(pool, model))
                root = search.root(best)
                allocations = {"best": (allocation_ratios(root, memo, sizes, sparsity).tolist(),
                                        block_values(root.children[0], memo).tolist())}
                atp = atp_from_training(search, sparsity, len(sizes))
                for name in config.report_baselines:
                    allocations[name] = tuple(pool.call("baseline", name, sparsity, atp["step"], group=model))
                tuning = {}
                if config.holdout_tune:
                    tuned, tuning = tune_on_holdout(pool, config, model, from_root(root), memo, sizes, sparsity,
                                                    atp["lambda"])
                    allocations.update(tuned)
                final = final_perplexities(pool, config, [(model, r) for r, _ in allocations.values()])
                entries = {name: {"ratios": r, "block_metric": m, "val_fitness": None, "final": f}
                           for (name, (r, m)), f in zip(allocations.items(), final)}
                out[f"{model}@{sparsity:g}"] = {"model": model, "sparsity": sparsity, "trained": False,
                                                "allocations": entries, "dense": dense, "atp": atp, "tuning": tuning}
        return out
    finally:
        pool.close()


def tune_on_holdout(pool, config: RunConfig, model: str, function: dict, memo, sizes, sparsity: float,
                    atp_lambda: float):
    """The replayed function with its map constant, and ATP with its lambda, chosen on the held-out
    model's own `config.holdout_tune` texts with the final pruner: the shape comes from the search,
    the amplitude from the new model, as `apply.py --tune-spread --atp-text TEXT` does. Only those
    texts are read to choose; the report texts are measured afterwards, on the chosen two.

    The lowest geometric mean of the texts' perplexities wins (dsa/functions/amplitude.py); with
    `config.holdout_tune_z` only when it beats the training models' constant (the function's own,
    ATP's `atp_lambda`) by that many standard errors over the windows.

    Returns ({"best-tuned": (ratios, values), "atp-tuned": (ratios, metric)}, their grids)."""
    texts, grids = list(config.holdout_tune), {"best-tuned": [], "atp-tuned": []}
    references = {"best-tuned": map_of(function)[1], "atp-tuned": atp_lambda}
    values = amplitude_grid(function)
    if config.holdout_tune_z and references["best-tuned"] not in values:  # the reference is measured too
        values = sorted({*values, references["best-tuned"]})
    for value in values:
        root = function_root(with_map_constant(function, value))
        try:
            ratios = allocation_ratios(root, memo, sizes, sparsity).tolist()
        except ValueError:  # no valid ratios at this amplitude: not a candidate
            continue
        grids["best-tuned"].append((value, ratios, block_values(root.children[0], memo).tolist()))
    for lam, step in atp_grid(len(sizes), sparsity, ATP_LAMBDAS):
        grids["atp-tuned"].append((lam, *pool.call("baseline", "atp", sparsity, step, group=model)))
    measured = iter(final_perplexities(pool, config, [(model, r) for rows in grids.values() for _, r, _ in rows],
                                       texts=texts, windows=config.holdout_tune_windows, per_window=True))
    allocations, tuning = {}, {}
    for name, rows in grids.items():
        losses = [next(measured) for _ in rows]
        values = [value for value, _, _ in rows]
        reference = references[name] if references[name] in values else None
        chosen, how = choose_amplitude(values, losses, texts, reference, config.holdout_tune_z)
        grid = [{"value": value, **perplexities_of(window_losses), "window_log_ppl": window_losses}
                for value, window_losses in zip(values, losses)]
        label = " + ".join(texts)
        for row in grid:
            choice_score(row, texts)
        allocations[name] = rows[chosen][1:]
        tuning[name] = {"chosen": values[chosen], "chosen_on": label, "windows": config.holdout_tune_windows,
                        "grid": grid, **how}
    return allocations, tuning


def atp_from_training(search, sparsity: float, n_blocks: int) -> dict:
    """ATP on a held-out model: the spread (lambda) chosen on the training models' validation,
    as a replayed function would get it; its step follows from the held-out model's depth.

    The lambda is the one the multi-model search would select: the lowest mean over training
    models of log(validation perplexity), i.e. of log(ppl / ppl of uniform) up to a constant."""
    chosen = [t for t in getattr(search, "atp_choices", {}).values() if t["sparsity"] == sparsity]
    lam = ATP_LAMBDAS[0]
    if chosen:
        lambdas = [point["lambda"] for point in chosen[0]["grid"]]
        lam = min(lambdas, key=lambda l: sum(math.log(next(p["validation"] for p in c["grid"] if p["lambda"] == l))
                                             for c in chosen))
    legal = [step for lam_, step in atp_grid(n_blocks, sparsity, ATP_LAMBDAS) if lam_ == lam]
    return {"lambda": lam, "step": legal[0] if legal else 0.0, "chosen_on": "training models"}


def choose_atp_steps(search, pool, windows: int) -> list[dict]:
    """ATP's common difference per target: the grid point with the best validation fitness
    (cached for the search's ATP seeds), all targets' grids in one batch. Each choice records the
    grid, every point's fitness and the choice."""
    grids = [atp_grid(len(t.sizes), t.sparsity, ATP_LAMBDAS) for t in search.targets]
    requests = [(index, [pool.call("baseline", "atp", t.sparsity, step, group=t.group)[0] for _, step in grid])
                for index, (t, grid) in enumerate(zip(search.targets, grids))]
    choices = []
    for t, grid, values in zip(search.targets, grids, search.fitness_on(requests, windows, "ATP grid")):
        best = min(range(len(grid)), key=values.__getitem__)
        choices.append({"grid": [{"lambda": lam, "step": step, "validation": value}
                                 for (lam, step), value in zip(grid, values)],
                        "lambda": grid[best][0], "step": grid[best][1], "sparsity": t.sparsity,
                        "chosen_on": "validation"})
    search.atp_choices = dict(enumerate(choices))
    return choices


def finish(search, pool, config: RunConfig, workers=0, address=None) -> dict:
    """Evaluate the best and the baselines on every target, and on the held-out models; write results/<name>/."""
    per_block = config.search.mode == "per-block"
    best, selection = (search.best(), {"count": 0}) if per_block else final_select(search, pool, config, final_perplexities)
    # Workers still in the rotation: one lost with its node and not yet dropped does not count.
    workers_info = {"kind": type(pool).__name__, "count": pool.size - len(getattr(pool, "lost", ())),
                    "startup_s": round(getattr(pool, "startup_s", 0.0), 1),
                    "reruns": getattr(pool, "reruns", 0)}  # jobs run again after their worker was lost
    tables = {}
    for table in target_reports(search, pool, config, best):
        tables[f"{table['model']}@{table['sparsity']:g}"] = table
    if not per_block and config.holdout:
        pool.release()  # the held-out models take the training models' cores or GPUs
        tables.update(holdout_report(search, config, best, workers, address))
    state = search.state
    counters = {"evaluations": state.evaluations, "windows_evaluated": state.windows_evaluated,
                "cache_hits": state.cache_hits, "feature_cache_hits": state.feature_cache_hits,
                "invalid_functions": state.invalid, "guard_readers": state.guard_readers,
                "distinct_features": len(state.features),
                "generations": state.generation, "wall_s": round(state.wall_s, 1), "history": state.history,
                "workers": workers_info, "final_select": selection}
    label = "per-block search" if per_block else "random search" if config.search.random_search else "evolution"
    function = None if per_block else from_root(search.root(best))
    return write_report(Path(config.results_dir) / config.name, function, tables, state.history, counters,
                        config.as_dict(), label)


def check_inputs(config: RunConfig, here: bool) -> None:
    """Every model's settings and every text, in one line each, before Ray or any model starts
    (a bad one would otherwise fail in each worker, or in the report after the whole search).
    `here`: the workers run on this machine (in this process or an embedded Ray)."""
    for model in (*config.model_names(), *config.holdout):
        check_config(dataclasses.replace(config.bench, model=model), here)
    if here:
        for text in (config.fitness_text, *config.report_texts, *config.holdout_tune):
            check_text(text)


def run(config: RunConfig, state: SearchState | None = None, bench: Workbench | None = None,
        stop_after: int | None = None, workers: int | None = 0, address: str | None = None) -> dict | None:
    """Run or resume a search; returns the report, or None when stopped early by `stop_after`.

    A loaded `bench` (of the first model), or `workers=0`, evaluates in this process; otherwise
    `workers` Ray actors per model (None: one per GPU, else one per model sharing the CPU cores);
    `address` joins a cluster.
    """
    start = time.perf_counter()
    check_inputs(config, here=address is None)
    benches = {config.model_names()[0]: bench} if bench is not None else None
    with checkpoint.exclusive(Path(config.checkpoint_dir) / config.name):
        pool = open_pool(config.worker_args(config.model_names()), workers, address, config.bench.device, benches)
        try:
            search = make_search(pool, config, state)
            search.run(stop_after=stop_after)
            if search.state.generation < config.search.generations:
                return None
            report = finish(search, pool, config, 0 if bench is not None else workers, address)
        finally:
            pool.close()
    report["total_wall_s"] = round(time.perf_counter() - start, 1)
    return report

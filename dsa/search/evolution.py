"""The evolutionary loop: (mu + lambda) GP with tournament selection, multi-fidelity screening,
a hall of fame, and a JSON checkpoint after every generation.

One generation: lambda offspring (crossover + mutation of tournament winners, or fresh random
functions in random-search mode) -> ratios (memoised block features, scalar math) -> every new
allocation scored on the first `screen_windows` validation windows -> the best `promote` completed
on all fitness windows -> the best `population` of parents + completed offspring survive.
"""
from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from deap import base, creator, gp, tools
from tqdm.auto import tqdm

from . import checkpoint
from .fitness import FitnessCache, fitness_together, ratio_key
from dsa.protocol.score import multi_model_score
from dsa.core.constants import ALPHA_EPS
from dsa.allocation.matrices import MatrixUnits
from dsa.functions.genome import (GRANULARITIES, build_pset, check_operands, names_of, operands_for, random_subtree,
                                  seed_genomes, tree_from_names)
from dsa.functions import guards
from dsa.functions.replay import seed_names
from dsa.functions.pipeline import FeatureMemo, InvalidFunction, allocation_ratios, block_values, importance_node, parse

PENALTY = 1e9  # fitness of a function that yields no valid ratios: never selected, never a crash
FITNESS_FORMS = ("cached", "sequential")  # how a full evaluation prunes (screening is always cached)

if not hasattr(creator, "DsaFitness"):
    creator.create("DsaFitness", base.Fitness, weights=(-1.0,))
    creator.create("DsaIndividual", gp.PrimitiveTree, fitness=creator.DsaFitness)


@dataclass(frozen=True)
class SearchConfig:
    sparsity: float = 0.7
    population: int = 8
    offspring: int = 8
    promote: int = 3           # offspring completed per generation: 3 of 8 miss the best 1 % of the time, 2 miss it 7 %
    generations: int = 12
    tournament: int = 3
    cxpb: float = 0.5
    mutpb: float = 0.6
    hall_of_fame: int = 5
    seed: int = 0
    arithmetic: bool = False
    random_search: bool = False
    fitness_windows: int = 4
    screen_windows: int = 1
    sparsities: tuple = ()     # several sparsities, averaged like models; empty: `sparsity` alone
    mode: str = "function"     # "function": evolve allocation functions; "per-block": evolve ratios
    level_step: float = 0.01   # per-block: the ratio step of one level
    max_switches: int = 3      # per-block: level switches per child (EvoPress: 1..3)
    fitness_form: str = "cached"  # full evaluations: "cached" Wanda (the proxy) or "sequential" (the final pruner)
    operands: tuple = ()       # the operands functions may read; empty: all of OPERANDS
    guard_check: bool = False  # reject functions whose ratios move when the ops' guards move (dsa.functions.guards)
    seed_functions: tuple = ()  # library names or function files added to the baselines' seeds
    granularity: str = "block"  # "matrix": one ratio per prunable matrix (per-matrix pipeline + role offsets)

    def allowed_operands(self) -> tuple:
        return check_operands(self.operands or operands_for(self.granularity), self.granularity)


@dataclass
class SearchState:
    """Everything a resumed run needs; saved as JSON after each generation."""

    generation: int = 0
    population: list = field(default_factory=list)   # [names, fitness]
    hall_of_fame: list = field(default_factory=list)  # [names, fitness]
    losses: dict = field(default_factory=dict)        # ratio key -> {window index: loss}
    features: dict = field(default_factory=dict)      # reduction prefix -> per-block values
    history: list = field(default_factory=list)       # per generation: best, median, evaluations
    evaluations: int = 0          # candidate evaluations actually run (screen or completion)
    windows_evaluated: int = 0
    cache_hits: int = 0
    invalid: int = 0
    guard_readers: int = 0        # of the invalid: functions rejected for reading a guard (guard_check)
    feature_cache_hits: int = 0
    wall_s: float = 0.0
    rng: list | None = None


def check_state(state: SearchState, config: SearchConfig) -> None:
    """A checkpoint's state, field by field: valid JSON with bad contents never reaches the loop.

    Raises ValueError saying what is wrong.
    """
    def expect(condition, message):
        if not condition:
            raise ValueError(message)

    for name in ("population", "offspring", "promote", "generations", "tournament", "hall_of_fame",
                 "fitness_windows", "screen_windows", "max_switches"):
        value = getattr(config, name)
        expect(type(value) is int and value >= 1, f"config {name} must be a positive integer, not {value!r:.40}")
    for name in ("cxpb", "mutpb"):
        expect(isinstance(getattr(config, name), (int, float)) and 0 <= getattr(config, name) <= 1,
               f"config {name} must be a probability")
    for value in (config.sparsity, *config.sparsities):
        expect(isinstance(value, (int, float)) and 0 < value < 1, "config sparsity must lie in (0, 1)")
    expect(config.mode in ("function", "per-block"), f"unknown search mode {config.mode!r:.40}")
    expect(config.fitness_form in FITNESS_FORMS, f"unknown fitness form {config.fitness_form!r:.40}")
    expect(config.granularity in GRANULARITIES, f"unknown granularity {config.granularity!r:.40}")
    expect(config.granularity == "block" or config.mode == "function", "per-matrix ratios are searched as functions")
    expect(isinstance(config.seed_functions, (list, tuple)) and all(isinstance(s, str) for s in config.seed_functions),
           "config seed_functions must be a list of names or paths")
    counters = ("generation", "evaluations", "windows_evaluated", "cache_hits", "invalid", "guard_readers",
                "feature_cache_hits")
    for name in counters:
        value = getattr(state, name)
        expect(type(value) is int and value >= 0, f"{name} must be a non-negative integer, not {value!r:.40}")
    expect(isinstance(state.wall_s, (int, float)) and state.wall_s >= 0, "wall_s must be a non-negative number")
    for name in ("losses", "features"):
        expect(isinstance(getattr(state, name), dict), f"{name} must be an object")
    expect(isinstance(state.history, list), "history must be a list")
    pset = build_pset(config.arithmetic, config.allowed_operands(), config.granularity)
    for field_name in ("population", "hall_of_fame"):
        entries = getattr(state, field_name)
        expect(isinstance(entries, list), f"{field_name} must be a list")
        for entry in entries:
            expect(isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], (int, float)),
                   f"{field_name} entries must be [genome, fitness]")
            genome = entry[0]
            if config.mode == "per-block":
                expect(isinstance(genome, list) and all(type(v) is int for v in genome), "levels must be integers")
            else:
                expect(isinstance(genome, list) and all(isinstance(n, str) for n in genome), "names must be strings")
                unknown = [n for n in genome if n not in pset.mapping]
                expect(not unknown, f"unknown node {unknown[:1]}")
    if state.rng is not None:
        rng = state.rng
        expect(isinstance(rng, list) and len(rng) == 3 and type(rng[0]) is int and isinstance(rng[1], list)
               and len(rng[1]) == 625 and all(type(v) is int and 0 <= v < 2**32 for v in rng[1])
               and (rng[2] is None or isinstance(rng[2], float)), "rng is not a saved random state")
        expect(state.population, "a started run has a population")


def fitness_caches(state, evaluator, targets, form: str) -> tuple[list, list]:
    """Per target: the screening caches (cached form) and the full-evaluation caches (`form`)."""
    screening = [FitnessCache(state, evaluator, t.namespace, t.group, units=t.units) for t in targets]
    if form == "cached":
        return screening, screening
    return screening, [FitnessCache(state, evaluator, t.namespace, t.group, form, t.units) for t in targets]


def one_point_crossover(ind1, ind2):
    """DEAP's gp.cxOnePoint (swap two subtrees of one node type), with the types in a fixed order.

    DEAP draws the type from a set of classes, whose order follows memory addresses: the same
    seed bred different offspring in different processes. Sorting by name makes runs repeatable.
    """
    if len(ind1) < 2 or len(ind2) < 2:
        return ind1, ind2
    types1, types2 = defaultdict(list), defaultdict(list)
    for index, node in enumerate(ind1[1:], 1):
        types1[node.ret].append(index)
    for index, node in enumerate(ind2[1:], 1):
        types2[node.ret].append(index)
    common = sorted(set(types1) & set(types2), key=lambda t: t.__name__)
    if common:
        kind = random.choice(common)
        slice1 = ind1.searchSubtree(random.choice(types1[kind]))
        slice2 = ind2.searchSubtree(random.choice(types2[kind]))
        ind1[slice1], ind2[slice2] = ind2[slice2], ind1[slice1]
    return ind1, ind2


@dataclass
class Target:
    """One (model, sparsity) a candidate function is scored on, with that model's block data.

    `namespace` prefixes its fitness-cache keys and its memoised features: empty for a
    single-model search (so its checkpoints read as before), 'model@sparsity|' otherwise.
    """

    group: str | None      # the pool group (model) whose workers evaluate it; None: the only one
    sparsity: float
    sizes: object          # float64 tensor, prunable weights per block
    features: Callable     # prefix node -> per-block values, computed where the model is
    namespace: str = ""
    # The same with the guards moved, where the model is (None: in process, features(node, guards=MOVED_GUARDS)).
    moved_features: Callable | None = None
    units: MatrixUnits | None = None  # a per-matrix search: the model's matrices (`sizes` are then theirs)


class Search:
    """The function search over one or several targets (models x sparsities).

    With one target a candidate's fitness is its validation perplexity (or KL); with several,
    the mean over targets of log(fitness / fitness of uniform), so no model dominates.
    """

    def __init__(self, config: SearchConfig, sizes, features: Callable, evaluator, state: SearchState | None = None,
                 checkpoint_dir=None, extra: dict | None = None, targets: list[Target] | None = None,
                 seed_eps: float = ALPHA_EPS):
        if not 1 <= config.screen_windows <= config.fitness_windows:
            raise ValueError("screen_windows must be between 1 and fitness_windows")
        self.config = config
        self.evaluator = evaluator
        self.pset = build_pset(config.arithmetic, config.allowed_operands(), config.granularity)
        self.state = state or SearchState()
        self.targets = targets or [Target(None, config.sparsity, sizes, features)]
        self.sizes = self.targets[0].sizes
        # One memo per model, all stored in the checkpointed state (keys carry the namespace).
        self.memos, self.moved_memos = {}, {}
        for target in self.targets:
            model = target.namespace.split("@")[0]
            if model not in self.memos:
                self.memos[model] = FeatureMemo(target.features, namespace=f"{model}|" if model else "",
                                                units=target.units)
                self.memos[model].values = self.state.features
                moved = target.moved_features
                if moved is None and target.features is not None:  # a Search that only breeds has none
                    moved = partial(target.features, guards=guards.MOVED_GUARDS)
                self.moved_memos[model] = FeatureMemo(moved, namespace=f"guards-moved|{model}|",
                                                      guards=guards.MOVED_GUARDS, units=target.units)
                self.moved_memos[model].values = self.state.features
        self.caches, self.full_caches = fitness_caches(self.state, evaluator, self.targets, config.fitness_form)
        self.checkpoint_dir = checkpoint_dir
        self.extra = extra or {}
        self.seed_eps = seed_eps  # AlphaPruning's eps for the search's metric, as the baseline uses
        self.toolbox = self._toolbox()

    # ---- genome plumbing -------------------------------------------------------------------
    def _toolbox(self) -> base.Toolbox:
        toolbox = base.Toolbox()
        toolbox.register("expr", random_subtree, arith_prob=0.2 if self.config.arithmetic else 0.0)
        toolbox.register("select", tools.selTournament, tournsize=self.config.tournament)
        toolbox.register("mate", one_point_crossover)
        limit = gp.staticLimit(key=lambda ind: ind.height, max_value=20)
        toolbox.decorate("mate", limit)
        return toolbox

    def individual(self, names: list[str]):
        return creator.DsaIndividual(tree_from_names(self.pset, names))

    def random_individual(self):
        return creator.DsaIndividual(random_subtree(self.pset, self.pset.ret, random,
                                                    0.2 if self.config.arithmetic else 0.0))

    def mutate(self, ind):
        """Either swap one op for another of its stage (incl. the map constant) or regrow a subtree."""
        if random.random() < 0.5:
            return gp.mutNodeReplacement(ind, self.pset)
        return gp.mutUniform(ind, self.toolbox.expr, self.pset)

    def root(self, ind):
        return parse(names_of(ind), lambda name: self.pset.mapping[name].arity)

    def memo_of(self, target: Target) -> FeatureMemo:
        return self.memos[target.namespace.split("@")[0]]

    def allocation_of(self, ind) -> list[list[float]] | None:
        """Per-block ratios for every target, or None when the function is invalid on any
        (penalised, never a crash). Also tags the individual with its allocation key, which
        survival de-duplicates on."""
        root = self.root(ind)
        result = []
        for target in self.targets:
            memo = self.memo_of(target)
            before = memo.hits
            try:
                result.append(allocation_ratios(root, memo, target.sizes, target.sparsity).tolist())
                if self.config.guard_check:
                    self._check_guards(root, target, result[-1])
            except (InvalidFunction, ValueError, RuntimeError, OverflowError):
                result = None
            self.state.feature_cache_hits += memo.hits - before
            if result is None:
                break
        ind.key = "|".join(ratio_key(r) for r in result) if result is not None else f"invalid:{ind}"
        return result

    def _check_guards(self, root, target: Target, found: list[float]) -> None:
        """Raise InvalidFunction when the ratios move with the ops' guard constants (the moved memo's)."""
        moved = allocation_ratios(root, self.moved_memos[target.namespace.split("@")[0]], target.sizes,
                                  target.sparsity).tolist()
        if guards.guard_shift(found, moved) > guards.GUARD_TOLERANCE:
            self.state.guard_readers += 1
            raise InvalidFunction("reads a guard")

    def importance_of(self, ind, target: int = 0) -> list[float]:
        """The per-block values the map receives (after post-processing), on one target."""
        return block_values(importance_node(self.root(ind)), self.memo_of(self.targets[target])).tolist()

    def ratios_of(self, ind, target: int = 0):
        """One target's ratios (the only target's in a single-model search) as the pruners take them:
        per block, or in a per-matrix search one {linear name: ratio} per block; None when invalid."""
        allocation = self.allocation_of(ind)
        if allocation is None:
            return None
        units = self.targets[target].units
        return allocation[target] if units is None else units.entries(allocation[target])

    # ---- fitness -----------------------------------------------------------------------------
    def fitness(self, ratio_vectors: list, count: int, desc: str | None = None, target: int = 0) -> list[float]:
        """One target's fitness of each ratio vector on its first `count` windows (cached; one batch);
        a full evaluation (all fitness windows) prunes in the configured fitness form."""
        return self.fitness_on([(target, ratio_vectors)], count, desc)[0]

    def fitness_on(self, requests: list[tuple[int, list]], count: int, desc: str | None = None) -> list[list[float]]:
        """`fitness` of several (target index, ratio vectors) requests as one batch: every target's
        model evaluates its share at the same time."""
        caches = self.full_caches if count == self.config.fitness_windows else self.caches
        return fitness_together([(caches[index], ratios, count) for index, ratios in requests], desc)

    def score(self, allocations: list, count: int, desc: str | None = None) -> list[float]:
        """The selection value of each allocation (one ratio vector per target).

        One target: its fitness. Several: mean over targets of log(fitness / uniform's fitness),
        uniform measured on the same windows (cached after the first call).
        """
        if len(self.targets) == 1:
            return self.fitness([a[0] for a in allocations], count, desc)
        requests = [(index, [a[index] for a in allocations] + [[t.sparsity] * len(t.sizes)])
                    for index, t in enumerate(self.targets)]
        per_target = self.fitness_on(requests, count, desc)  # each target's values, then uniform's
        return [multi_model_score([values[i] for values in per_target], [values[-1] for values in per_target])
                for i in range(len(allocations))]

    def _assign(self, ind, value: float) -> None:
        ind.fitness.values = (value,)

    # ---- the loop -------------------------------------------------------------------------------
    def initialise(self) -> None:
        random.seed(self.config.seed)
        seeds = seed_genomes(alpha_eps=self.seed_eps, operands=self.config.allowed_operands(),
                             granularity=self.config.granularity)
        for spec in self.config.seed_functions:
            seeds[spec] = seed_names(spec, self.config.allowed_operands(), self.config.arithmetic, self.config.granularity)
        population = [self.individual(names) for names in seeds.values()]
        while len(population) < max(self.config.population, len(seeds)):
            population.append(self.random_individual())
        allocations = [self.allocation_of(ind) for ind in population]
        self.state.invalid += allocations.count(None)
        valid = [(ind, ratios) for ind, ratios in zip(population, allocations) if ratios is not None]
        values = self.score([r for _, r in valid], self.config.fitness_windows, "initial population")
        for ind in population:
            self._assign(ind, PENALTY)
        for (ind, _), value in zip(valid, values):
            self._assign(ind, value)
        self.population = population
        self.hof = tools.HallOfFame(self.config.hall_of_fame)
        self.hof.update(population)
        self._record()

    def _variation(self) -> list:
        if self.config.random_search:
            return [self.random_individual() for _ in range(self.config.offspring)]
        offspring = [self.toolbox.clone(p) for p in self.toolbox.select(self.population, self.config.offspring)]
        for a, b in zip(offspring[::2], offspring[1::2]):
            if random.random() < self.config.cxpb:
                self.toolbox.mate(a, b)
        for i, ind in enumerate(offspring):
            if random.random() < self.config.mutpb:
                (offspring[i],) = self.mutate(ind)
        for ind in offspring:
            del ind.fitness.values
        return offspring

    def generation(self) -> None:
        cfg = self.config
        offspring = self._variation()
        valid = []
        for ind in offspring:
            ratios = self.allocation_of(ind)
            if ratios is None:
                self.state.invalid += 1
                self._assign(ind, PENALTY)
            else:
                valid.append((ind, ratios))
        screen = self.score([r for _, r in valid], cfg.screen_windows, "screening")
        screened = sorted(((value, ind.key, ind, r) for value, (ind, r) in zip(screen, valid)),
                          key=lambda item: item[0])
        # Promote the best distinct allocations to the full fitness budget.
        promoted_keys = []
        for _, key, _, _ in screened:
            if key not in promoted_keys and len(promoted_keys) < cfg.promote:
                promoted_keys.append(key)
        chosen = [(ind, ratios) for _, key, ind, ratios in screened if key in promoted_keys or self._complete(ratios)]
        for (ind, _), value in zip(chosen, self.score([r for _, r in chosen], cfg.fitness_windows, "completing")):
            self._assign(ind, value)
        completed = [ind for ind, _ in chosen]
        # (mu + lambda) survival among distinct allocations.
        pool, seen = [], set()
        for ind in sorted(self.population + completed, key=lambda i: i.fitness.values[0]):
            if ind.key not in seen:
                seen.add(ind.key)
                pool.append(ind)
        self.population = pool[:cfg.population]
        self.hof.update(self.population)
        self._record()

    def _complete(self, allocation) -> bool:
        """Whether every target's fitness windows of this allocation are known already."""
        return all(str(i) in self.state.losses.get(cache.key(ratios), {})
                   for cache, ratios in zip(self.full_caches, allocation) for i in range(self.config.fitness_windows))

    def _record(self) -> None:
        values = [ind.fitness.values[0] for ind in self.population if ind.fitness.values[0] < PENALTY]
        self.state.history.append({"generation": self.state.generation, "best": min(values),
                                   "median": statistics.median(values), "evaluations": self.state.evaluations})

    def save(self) -> None:
        self.state.population = [[names_of(i), i.fitness.values[0]] for i in self.population]
        self.state.hall_of_fame = [[names_of(i), i.fitness.values[0]] for i in self.hof]
        checkpoint.save_search(self.checkpoint_dir, self.config, self.state, self.extra)

    def restore(self) -> None:
        checkpoint.restore_rng(self.state.rng)
        self.population = [self._with_fitness(n, f) for n, f in self.state.population]
        hits, readers = self.state.feature_cache_hits, self.state.guard_readers
        for ind in self.population:
            self.allocation_of(ind)  # re-tags the allocation key; features come from the checkpoint
        # Re-tagging is bookkeeping, not search work: a reader kept in the population is not counted twice.
        self.state.feature_cache_hits, self.state.guard_readers = hits, readers
        self.hof = tools.HallOfFame(self.config.hall_of_fame)
        # Inserted worst first: DEAP puts a newcomer before its equals, so ties keep their saved order.
        for names, value in reversed(self.state.hall_of_fame):
            self.hof.insert(self._with_fitness(names, value))

    def _with_fitness(self, names, value):
        ind = self.individual(names)
        self._assign(ind, value)
        return ind

    def run(self, stop_after: int | None = None, log: Callable[[str], None] = tqdm.write) -> None:
        """Run (or continue) to `generations`; `stop_after` ends early, as a kill would."""
        run_generations(self, "random search" if self.config.random_search else "evolution", stop_after, log,
                        lambda: f"features {len(self.state.features)}")

    def best(self):
        return self.hof[0]


def run_generations(search, label: str, stop_after: int | None, log: Callable[[str], None],
                    detail: Callable[[], str] = lambda: "") -> None:
    """The loop both searches share: initialise or restore, then a checkpoint after every generation."""
    start = time.perf_counter()
    if search.state.rng is None:
        search.initialise()
        search.state.wall_s += time.perf_counter() - start
        search.save()
    else:
        search.restore()
        search.save()  # report options given on resume (--holdout-tune, ...) are kept for the next one
    bar = tqdm(range(search.state.generation, search.config.generations), desc=label,
               initial=search.state.generation, total=search.config.generations)
    for _ in bar:
        if stop_after is not None and search.state.generation >= stop_after:
            break
        tic = time.perf_counter()
        search.state.generation += 1
        search.generation()
        search.state.wall_s += time.perf_counter() - tic
        search.save()
        last = search.state.history[-1]
        bar.set_postfix(best=f"{last['best']:.3f}")
        log(f"gen {search.state.generation:3d}  best {last['best']:.4f}  median {last['median']:.4f}  "
            f"evaluations {search.state.evaluations}  cache hits {search.state.cache_hits}  {detail()}  "
            f"{time.perf_counter() - tic:.1f}s")

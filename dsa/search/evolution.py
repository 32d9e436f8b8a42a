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
from dataclasses import asdict, dataclass, field
from typing import Callable

from deap import base, creator, gp, tools
from tqdm.auto import tqdm

from . import checkpoint
from .fitness import ratio_key
from dsa.functions.genome import SEEDS, Ratios, build_pset, names_of, random_subtree, seed_names, tree_from_names
from dsa.functions.pipeline import FeatureMemo, InvalidFunction, allocation_ratios, parse

PENALTY = 1e9  # fitness of a function that yields no valid ratios: never selected, never a crash

if not hasattr(creator, "DsaFitness"):
    creator.create("DsaFitness", base.Fitness, weights=(-1.0,))
    creator.create("DsaIndividual", gp.PrimitiveTree, fitness=creator.DsaFitness)


@dataclass(frozen=True)
class SearchConfig:
    sparsity: float = 0.7
    population: int = 8
    offspring: int = 8
    promote: int = 2
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
    feature_cache_hits: int = 0
    wall_s: float = 0.0
    rng: list | None = None


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


class Search:
    def __init__(self, config: SearchConfig, sizes, features: Callable, evaluator, state: SearchState | None = None,
                 checkpoint_dir=None, extra: dict | None = None):
        if not 1 <= config.screen_windows <= config.fitness_windows:
            raise ValueError("screen_windows must be between 1 and fitness_windows")
        self.config = config
        self.sizes = sizes
        self.evaluator = evaluator
        self.pset = build_pset(config.arithmetic)
        self.memo = FeatureMemo(features)
        self.state = state or SearchState()
        self.memo.values = self.state.features
        self.checkpoint_dir = checkpoint_dir
        self.extra = extra or {}
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
        return creator.DsaIndividual(random_subtree(self.pset, Ratios, random, 0.2 if self.config.arithmetic else 0.0))

    def mutate(self, ind):
        """Either swap one op for another of its stage (incl. the map constant) or regrow a subtree."""
        if random.random() < 0.5:
            return gp.mutNodeReplacement(ind, self.pset)
        return gp.mutUniform(ind, self.toolbox.expr, self.pset)

    def root(self, ind):
        return parse(names_of(ind), lambda name: self.pset.mapping[name].arity)

    def ratios_of(self, ind):
        """Per-block ratios, or None when the function is invalid (penalised, never a crash).

        Also tags the individual with its allocation key, which survival de-duplicates on.
        """
        before = self.memo.hits
        try:
            result = allocation_ratios(self.root(ind), self.memo, self.sizes, self.config.sparsity).tolist()
        except (InvalidFunction, ValueError, RuntimeError, OverflowError):
            result = None
        self.state.feature_cache_hits += self.memo.hits - before
        ind.key = ratio_key(result) if result is not None else f"invalid:{ind}"
        return result

    # ---- fitness -----------------------------------------------------------------------------
    def fitness(self, allocations: list, count: int, desc: str | None = None) -> list[float]:
        """Fitness of each allocation on its first `count` windows, as one batch for the workers.

        Only windows not cached yet are evaluated; an allocation requested twice (or already
        known) is a cache hit.
        """
        jobs = {}
        for ratios in allocations:
            key = ratio_key(ratios)
            known = self.state.losses.setdefault(key, {})
            missing = [i for i in range(count) if str(i) not in known]
            if missing and key not in jobs:
                jobs[key] = (ratios, missing)
            else:
                self.state.cache_hits += 1
        for (key, (_, missing)), losses in zip(jobs.items(), self.evaluator.losses_many(list(jobs.values()), desc)):
            self.state.losses[key].update({str(i): loss for i, loss in zip(missing, losses)})
            self.state.evaluations += 1
            self.state.windows_evaluated += len(missing)
        return [self.evaluator.score([self.state.losses[ratio_key(r)][str(i)] for i in range(count)])
                for r in allocations]

    def _assign(self, ind, value: float) -> None:
        ind.fitness.values = (value,)

    # ---- the loop -------------------------------------------------------------------------------
    def initialise(self) -> None:
        random.seed(self.config.seed)
        population = [self.individual(seed_names(name)) for name in SEEDS]
        while len(population) < max(self.config.population, len(SEEDS)):
            population.append(self.random_individual())
        allocations = [self.ratios_of(ind) for ind in population]
        self.state.invalid += allocations.count(None)
        valid = [(ind, ratios) for ind, ratios in zip(population, allocations) if ratios is not None]
        values = self.fitness([r for _, r in valid], self.config.fitness_windows, "initial population")
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
            ratios = self.ratios_of(ind)
            if ratios is None:
                self.state.invalid += 1
                self._assign(ind, PENALTY)
            else:
                valid.append((ind, ratios))
        screen = self.fitness([r for _, r in valid], cfg.screen_windows, "screening")
        screened = sorted(((value, ratio_key(r), ind, r) for value, (ind, r) in zip(screen, valid)),
                          key=lambda item: item[0])
        # Promote the best distinct allocations to the full fitness budget.
        promoted_keys = []
        for _, key, _, _ in screened:
            if key not in promoted_keys and len(promoted_keys) < cfg.promote:
                promoted_keys.append(key)
        chosen = [(ind, ratios) for _, key, ind, ratios in screened
                  if key in promoted_keys or all(str(i) in self.state.losses[key] for i in range(cfg.fitness_windows))]
        for (ind, _), value in zip(chosen, self.fitness([r for _, r in chosen], cfg.fitness_windows, "completing")):
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

    def _record(self) -> None:
        values = [ind.fitness.values[0] for ind in self.population if ind.fitness.values[0] < PENALTY]
        self.state.history.append({"generation": self.state.generation, "best": min(values),
                                   "median": statistics.median(values), "evaluations": self.state.evaluations})

    def save(self) -> None:
        self.state.population = [[names_of(i), i.fitness.values[0]] for i in self.population]
        self.state.hall_of_fame = [[names_of(i), i.fitness.values[0]] for i in self.hof]
        state = random.getstate()
        self.state.rng = [state[0], list(state[1]), state[2]]
        if self.checkpoint_dir is not None:
            checkpoint.save(self.checkpoint_dir, {"config": asdict(self.config), "state": asdict(self.state),
                                                  **self.extra})

    def restore(self) -> None:
        version, internal, gauss = self.state.rng
        random.setstate((version, tuple(internal), gauss))
        self.population = [self._with_fitness(n, f) for n, f in self.state.population]
        for ind in self.population:
            self.ratios_of(ind)  # re-tags the allocation key; features come from the checkpoint
        self.hof = tools.HallOfFame(self.config.hall_of_fame)
        self.hof.update([self._with_fitness(n, f) for n, f in self.state.hall_of_fame])

    def _with_fitness(self, names, value):
        ind = self.individual(names)
        self._assign(ind, value)
        return ind

    def run(self, stop_after: int | None = None, log: Callable[[str], None] = tqdm.write) -> None:
        """Run (or continue) to `generations`; `stop_after` ends early, as a kill would."""
        start = time.perf_counter()
        if self.state.rng is None:
            self.initialise()
            self.state.wall_s += time.perf_counter() - start
            self.save()
        else:
            self.restore()
        label = "random search" if self.config.random_search else "evolution"
        bar = tqdm(range(self.state.generation, self.config.generations), desc=label, initial=self.state.generation,
                   total=self.config.generations)
        for _ in bar:
            if stop_after is not None and self.state.generation >= stop_after:
                break
            tic = time.perf_counter()
            self.state.generation += 1
            self.generation()
            self.state.wall_s += time.perf_counter() - tic
            self.save()
            last = self.state.history[-1]
            bar.set_postfix(best=f"{last['best']:.3f}")
            log(f"gen {self.state.generation:3d}  best {last['best']:.4f}  median {last['median']:.4f}  "
                f"evaluations {self.state.evaluations}  cache hits {self.state.cache_hits}  "
                f"features {len(self.memo.values)}  {time.perf_counter() - tic:.1f}s")

    def best(self):
        return self.hof[0]

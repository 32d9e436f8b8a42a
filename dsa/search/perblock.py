"""Per-block evolutionary search (EvoPress-style): evolve the ratio vector itself, not a function.

(1 + lambda) evolution over per-block sparsity *levels* (ratio = sparsity + level * level_step):
- each generation, `offspring` children of the one parent, each made by 1..`max_switches`
  level switches (one block a level up, another a level down: the budget stays exact for
  equal-sized blocks; other sizes are re-balanced by one additive shift);
- duplicates and the parent are dropped before any evaluation;
- multi-step selection: every child on the first `screen_windows` validation windows, the best
  `promote` on all `fitness_windows`; the parent (already complete) competes in that last step,
  so the best vector never gets worse (elitist).
It shares the function search's fitness cache, checkpoint and report, so at an equal number of
evaluations it shows how close a function comes to a per-model optimum (EvoPress, Sieberling et al. 2024).
"""
from __future__ import annotations

import random
import statistics
from typing import Callable

import torch
from tqdm.auto import tqdm

from dsa.allocation.ratios import DEFAULT_MAX_RATIO, rebalance, weighted_mean

from . import checkpoint
from .evolution import SearchConfig, SearchState, Target, fitness_caches, run_generations


class PerBlockSearch:
    def __init__(self, config: SearchConfig, sizes, evaluator, state: SearchState | None = None,
                 checkpoint_dir=None, extra: dict | None = None):
        if not 1 <= config.screen_windows <= config.fitness_windows:
            raise ValueError("screen_windows must be between 1 and fitness_windows")
        self.config = config
        self.sizes = torch.as_tensor(sizes, dtype=torch.float64)
        self.equal_sizes = bool((self.sizes == self.sizes[0]).all())
        self.state = state or SearchState()
        self.targets = [Target(None, config.sparsity, self.sizes, None)]
        (self.cache,), (self.full_cache,) = fitness_caches(self.state, evaluator, self.targets, config.fitness_form)
        self.checkpoint_dir = checkpoint_dir
        self.extra = extra or {}
        # Levels reachable from the target sparsity without leaving [0, max_ratio].
        step = config.level_step
        self.lowest = -int(config.sparsity / step + 1e-9)
        self.highest = int((DEFAULT_MAX_RATIO - config.sparsity) / step + 1e-9)

    def fitness(self, ratio_vectors: list, count: int, desc: str | None = None, target: int = 0) -> list[float]:
        """Fitness of each ratio vector on its first `count` windows (cached; one batch); a full
        evaluation prunes in the configured fitness form."""
        cache = self.full_cache if count == self.config.fitness_windows else self.cache
        return cache(ratio_vectors, count, desc)

    def fitness_on(self, requests: list[tuple[int, list]], count: int, desc: str | None = None) -> list[list[float]]:
        return [self.fitness(ratios, count, desc) for _, ratios in requests]  # one target only

    # ---- levels <-> ratios --------------------------------------------------------------------
    def ratios_of(self, levels: list[int], target: int = 0) -> list[float]:
        ratios = [self.config.sparsity + level * self.config.level_step for level in levels]
        if self.equal_sizes:
            return ratios
        return rebalance(ratios, self.sizes, self.config.sparsity).tolist()

    def mutate(self, levels: list[int], rng: random.Random) -> list[int]:
        """1..max_switches level switches: one block up a level, a different one down a level."""
        child = list(levels)
        for _ in range(rng.randint(1, self.config.max_switches)):
            up = [i for i, level in enumerate(child) if level < self.highest]
            down = [i for i, level in enumerate(child) if level > self.lowest]
            a = rng.choice(up)
            b = rng.choice([i for i in down if i != a])
            child[a] += 1
            child[b] -= 1
        return child

    def budget_error(self, levels: list[int]) -> float:
        return abs(weighted_mean(self.ratios_of(levels), self.sizes) - self.config.sparsity)

    # ---- the loop -------------------------------------------------------------------------------
    def initialise(self) -> None:
        random.seed(self.config.seed)
        self.parent = [0] * len(self.sizes)  # uniform
        (self.parent_fitness,) = self.fitness([self.ratios_of(self.parent)], self.config.fitness_windows,
                                              "initial parent")
        self._record()

    def generation(self) -> None:
        cfg = self.config
        rng = random.Random(random.getrandbits(64))  # one draw from the checkpointed stream
        children, seen = [], {tuple(self.parent)}
        for _ in range(cfg.offspring):
            child = self.mutate(self.parent, rng)
            if tuple(child) not in seen:
                seen.add(tuple(child))
                children.append(child)
        screen = self.fitness([self.ratios_of(c) for c in children], cfg.screen_windows, "screening")
        promoted = [c for _, c in sorted(zip(screen, children), key=lambda item: item[0])[:cfg.promote]]
        values = self.fitness([self.ratios_of(c) for c in promoted], cfg.fitness_windows, "completing")
        for child, value in zip(promoted, values):
            if value < self.parent_fitness:
                self.parent, self.parent_fitness = child, value
        self.last_fitness = values + [self.parent_fitness]
        self._record()

    def _record(self) -> None:
        values = getattr(self, "last_fitness", [self.parent_fitness])
        self.state.history.append({"generation": self.state.generation, "best": self.parent_fitness,
                                   "median": statistics.median(values), "evaluations": self.state.evaluations})

    def save(self) -> None:
        self.state.population = [[self.parent, self.parent_fitness]]
        self.state.hall_of_fame = [[self.parent, self.parent_fitness]]
        checkpoint.save_search(self.checkpoint_dir, self.config, self.state, self.extra)

    def restore(self) -> None:
        checkpoint.restore_rng(self.state.rng)
        (self.parent, self.parent_fitness), = self.state.population
        self.parent = [int(level) for level in self.parent]

    def run(self, stop_after: int | None = None, log: Callable[[str], None] = tqdm.write) -> None:
        """Run (or continue) to `generations`; `stop_after` ends early, as a kill would."""
        run_generations(self, "per-block search", stop_after, log)

    def best(self) -> list[int]:
        return self.parent


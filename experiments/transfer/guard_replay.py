"""Would a finished depth-only search have run differently with `--guard-check`?

    python experiments/transfer/guard_replay.py checkpoints/loo-gemma-70-g12 [checkpoints/...]

Reruns each checkpointed search from scratch with the guard check on, answering every fitness
from the checkpoint's own loss cache, to the generation the checkpoint reached: no model is loaded (a function of depth alone needs only
each model's block count, which the cached features give). The check draws no random numbers,
so if it rejects only candidates that lost anyway, the rerun meets no allocation the cache lacks
and ends with the recorded best: the search with `--guard-check` is the same search. An
allocation missing from the cache means the trajectory changed; the rerun stops there and says
at which generation.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from dsa.core.constants import alpha_eps_for  # noqa: E402
from dsa.functions.genome import names_of  # noqa: E402
from dsa.functions.pipeline import features_on  # noqa: E402
from dsa.search import checkpoint, runner  # noqa: E402
from dsa.search.evolution import Search, SearchState, Target  # noqa: E402
from dsa.search.fitness import score  # noqa: E402


class Diverged(Exception):
    """The rerun asked for an allocation the original search never evaluated."""


class CacheOnly:
    """An evaluator that never prunes: every allocation must be in the loss cache already."""

    def __init__(self, tokens_per_window: int, objective: str):
        self.tokens_per_window, self.objective = tokens_per_window, objective

    def losses_routed(self, jobs, desc=None):
        raise Diverged(f"{len(jobs)} allocation(s) not in the cache")

    def score(self, window_losses, group=None) -> float:
        return score(window_losses, self.tokens_per_window, self.objective)


def _no_scores(operand, index):
    raise ValueError(f"a depth-only search does not read {operand}")


def _trace(history: list) -> list:
    """Best and median fitness per generation (the evaluation counts differ: the rerun prunes nothing)."""
    return [(h["best"], h["median"]) for h in history]


def replay(directory: Path, guard_check: bool = True) -> dict:
    document = checkpoint.load(directory)
    run = runner.RunConfig.from_dict(document["run"])
    if run.search.allowed_operands() != ("depth",):
        raise SystemExit(f"{directory}: not a depth-only search (its functions read model scores)")
    recorded = SearchState(**document["state"])
    config = dataclasses.replace(run.search, guard_check=guard_check)
    models, sparsities = run.model_names(), run.sparsities()
    single = len(models) == 1 and len(sparsities) == 1
    targets = []
    for model in models:
        prefix = f"{model}|" if not single else ""
        n_blocks = next(len(v) for k, v in recorded.features.items() if k.startswith(prefix))
        features = features_on(_no_scores, n_blocks)  # also takes the guards the check moves
        for sparsity in sparsities:  # equal blocks in every built-in model: ones weigh them as their sizes do
            targets.append(Target(model, sparsity, torch.ones(n_blocks, dtype=torch.float64), features,
                                  "" if single else f"{model}@{sparsity:g}|"))
    state = SearchState(losses=recorded.losses, features=dict(recorded.features))
    with tempfile.TemporaryDirectory() as scratch:
        search = Search(config, None, None, CacheOnly(run.model_config.seqlen - 1, run.objective), state, Path(scratch),
                        targets=targets, seed_eps=alpha_eps_for(run.model_config.metric))
        try:
            search.run(stop_after=recorded.generation, log=lambda line: None)  # as far as the checkpoint went
            diverged = None
        except Diverged as why:
            diverged = f"generation {state.generation}: {why}"
    result = {"run": str(directory), "guard_readers": state.guard_readers, "diverged": diverged,
              "generations": state.generation}
    if diverged is None:
        best, recorded_best = search.best(), recorded.hall_of_fame[0]
        result.update(same_best=names_of(best) == recorded_best[0] and best.fitness.values[0] == recorded_best[1],
                      same_history=_trace(state.history) == _trace(recorded.history))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint directories of depth-only searches")
    parser.add_argument("--without-check", action="store_true",
                        help="rerun without the check: must reproduce the recorded search (tests this script)")
    args = parser.parse_args()
    for directory in args.checkpoints:
        print(replay(directory, guard_check=not args.without_check))


if __name__ == "__main__":
    main()

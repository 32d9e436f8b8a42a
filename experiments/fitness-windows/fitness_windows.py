"""How many validation windows a fitness needs, and how often screening drops the best candidate.

    python experiments/fitness-windows/fitness_windows.py --windows 16 --candidates 24 --threads 1
    python experiments/fitness-windows/fitness_windows.py --losses results/bench_fitness_windows.json --promote 3  # re-summarise
    python experiments/fitness-windows/fitness_windows.py --losses results/bench_fitness_windows.json --top 8        # the best 8

Candidates: the search's seed functions plus random valid functions (seed 0), each pruned in
the search's form (cached Wanda) at --sparsity; per-window loss on --windows validation windows
of 512 tokens. From those losses:
- spread: the standard deviation of a candidate's per-window log-perplexity, and of the
  differences between two candidates window by window (what a fitness on k windows averages);
- agreement: Spearman rank correlation between the ranking on the first k windows and the
  ranking on all of them, for k = 1, 2, 4, ...;
- screening: in simulated generations (random draws of --offspring candidates, the best
  --promote by the first --screen windows promoted), how often the best of the draw on all
  windows is not promoted.
"""
import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from dsa.functions.genome import seed_genomes  # noqa: E402
from dsa.functions.pipeline import features_on  # noqa: E402
from dsa.search.evolution import Search, SearchConfig  # noqa: E402
from dsa.protocol.score import spearman  # noqa: E402
from dsa.core.storage import atomic_write_text  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig  # noqa: E402


def candidates(search: Search, count: int) -> dict[str, list[float]]:
    """Distinct allocations: the seeds first, then random valid functions."""
    out, seen = {}, set()
    genomes = [(label, search.individual(names)) for label, names in seed_genomes().items()]
    random.seed(0)
    while len(genomes) < 20 * count and len(out) < count:
        for label, ind in genomes:
            ratios = search.ratios_of(ind)
            key = None if ratios is None else tuple(round(r, 4) for r in ratios)
            if key is not None and key not in seen and len(out) < count:
                seen.add(key)
                out[label] = ratios
        genomes = [(str(ind), ind) for ind in (search.random_individual() for _ in range(count))]
    return out


def summarise(losses: dict[str, list[float]], tokens: int, offspring: int, promote: int, screen: int,
              draws: int) -> dict:
    names = list(losses)
    log_ppl = {n: [loss / tokens for loss in losses[n]] for n in names}  # per-window log-perplexity
    windows = len(next(iter(losses.values())))
    full = [statistics.mean(log_ppl[n]) for n in names]
    within = statistics.median(statistics.stdev(log_ppl[n]) for n in names)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    between = statistics.median(statistics.stdev(x - y for x, y in zip(log_ppl[a], log_ppl[b])) for a, b in pairs)
    gaps = sorted(abs(fa - fb) for fa, fb in ((full[names.index(a)], full[names.index(b)]) for a, b in pairs))
    agreement = {}
    k = 1
    while k < windows:
        partial = [statistics.mean(log_ppl[n][:k]) for n in names]
        agreement[k] = spearman(partial, full)
        k *= 2
    rng = random.Random(0)
    missed = 0
    for _ in range(draws):
        draw = rng.sample(range(len(names)), offspring)
        by_screen = sorted(draw, key=lambda i: statistics.mean(log_ppl[names[i]][:screen]))[:promote]
        if min(draw, key=full.__getitem__) not in by_screen:
            missed += 1
    return {"windows": windows, "candidates": len(names),
            "median_within_candidate_sd_log_ppl": within,
            "median_paired_difference_sd_log_ppl": between,
            "median_gap_between_candidates_log_ppl": gaps[len(gaps) // 2],
            "spearman_first_k_vs_all": agreement,
            "screening": {"offspring": offspring, "promote": promote, "screen_windows": screen, "draws": draws,
                          "best_not_promoted": missed / draws}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--offspring", type=int, default=8)
    parser.add_argument("--promote", type=int, default=2)
    parser.add_argument("--screen", type=int, default=1)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_fitness_windows.json")
    parser.add_argument("--losses", help="an earlier run's JSON: summarise its losses again (other --screen, "
                                         "--promote, --offspring) without evaluating anything")
    parser.add_argument("--top", type=int, help="with --losses: only the N best candidates on all windows")
    args = parser.parse_args()
    if args.losses:
        earlier = json.loads(Path(args.losses).read_text())
        losses = earlier["losses"]
        if args.top:  # the spread and agreement among the best only (where selection happens)
            losses = dict(sorted(losses.items(), key=lambda item: sum(item[1]))[: args.top])
        print(json.dumps(summarise(losses, earlier["tokens_per_window"], min(args.offspring, len(losses)),
                                   args.promote, args.screen, args.draws), indent=2))
        return
    torch.set_num_threads(args.threads)
    session = EvaluationSession(ModelConfig(model=args.model), "wiki/validation", args.windows)
    search = Search(SearchConfig(sparsity=args.sparsity), session.sizes,
                    features_on(session.block_matrices, session.n_blocks), evaluator=None)
    allocations = candidates(search, args.candidates)
    losses = {}
    for index, (name, ratios) in enumerate(allocations.items()):
        losses[name] = session.window_losses(ratios, list(range(args.windows)))
        ppl = math.exp(sum(losses[name]) / (args.windows * session.tokens_per_window))
        print(f"{index + 1}/{len(allocations)} ppl {ppl:9.2f}  {name}", flush=True)
    session.restore()
    summary = summarise(losses, session.tokens_per_window, args.offspring, args.promote, args.screen, args.draws)
    print(json.dumps(summary, indent=2))
    atomic_write_text(args.out, json.dumps({"model": args.model, "sparsity": args.sparsity, "summary": summary,
                                            "tokens_per_window": session.tokens_per_window, "losses": losses},
                                           indent=2))


if __name__ == "__main__":
    main()

"""Cost of one search candidate relative to the bare forward pass over its fitness tokens.

    python bench/candidate.py [--model smollm2-135m] [--repeats 5] [--sequential-repeats 3]

Candidate = incremental re-prune at a function's ratios (features memoised) + loss on the
fitness windows; bare = the same windows through the dense model. Goal: ratio under 1.1.
Medians of --repeats runs, screen (1 window) and full (4 windows) fidelities; with
--sequential-repeats, also a full evaluation pruned by sequential Wanda (--fitness-form sequential).
"""
import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dsa.functions.pipeline import features_on  # noqa: E402
from dsa.search.evolution import Search, SearchConfig  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig, CalibratedModel  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sequential-repeats", type=int, default=0,
                        help="also time full evaluations in --fitness-form sequential (a calibration pass each)")
    parser.add_argument("--out", default="results/bench_candidate.json")
    args = parser.parse_args()
    calibrated = CalibratedModel(ModelConfig(model=args.model))
    session = EvaluationSession(calibrated, "wiki/validation", 4)
    search = Search(SearchConfig(), calibrated.sizes, features_on(session.block_matrices, session.n_blocks), None)
    random.seed(0)
    # Functions whose features are already memoised, as in a running search.
    pool = [search.random_individual() for _ in range(40)]
    pool = [ind for ind in pool if search.ratios_of(ind) is not None][: args.repeats * 2]
    result = {"model": args.model, "threads": torch.get_num_threads()}
    forms = [("screen", [0], "cached", args.repeats), ("full", [0, 1, 2, 3], "cached", args.repeats)]
    if args.sequential_repeats:
        forms.append(("full-sequential", [0, 1, 2, 3], "sequential", args.sequential_repeats))
    for label, indices, form, repeats in forms:
        windows = session.windows[indices]
        calibrated.window_nll(windows)  # warm-up
        bare, costs = [], []
        # Interleaved, so drifts in machine load hit both alike. The bare pass runs on the model as
        # the previous candidate left it (a dense matmul costs the same with zeros in it), so each
        # candidate's re-prune is incremental, as in a running search.
        for ind in pool[:repeats]:
            bare.append(_time(lambda: calibrated.window_nll(windows)))
            ratios = search.ratios_of(ind)
            costs.append(_time(lambda: session.window_losses(ratios, indices, form)))
        bare = statistics.median(bare)
        result[label] = {"tokens": windows.numel(), "bare_forward_s": bare, "candidate_s": statistics.median(costs),
                         "ratio": statistics.median(costs) / bare}
    calibrated.pruner.restore()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

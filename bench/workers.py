"""Throughput of the evaluation workers: in-process vs Ray actors (feeds BENCHMARKS.md).

    python bench/workers.py [--model smollm2-135m] [--candidates 8] [--repeats 3] [--layouts 0 1 2]
    python bench/workers.py --device cuda --layouts 0 1   # one GPU: in-process vs one num_gpus=1 actor

For each layout (0 = in this process, N = N Ray actors sharing the machine's cores) it times the
start-up (Ray + model loads), then batches of --candidates allocations (random functions' ratios,
as one generation's offspring) at screening fidelity (1 window) and full fidelity (4 windows):
medians of --repeats batches. Also: bytes a candidate puts on the wire (request, reply), the
round trip of an empty call, and each worker's memory accounting.
"""
import argparse
import json
import pickle
import random
import statistics
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dsa.search.evolution import Search, SearchConfig  # noqa: E402
from dsa.distributed.pool import open_pool  # noqa: E402
from dsa.functions.pipeline import features_on  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig  # noqa: E402


def allocations(session, count, seed=0):
    """Ratio vectors of `count` valid random functions (computed once, on a local session)."""
    search = Search(SearchConfig(), session.sizes, features_on(session.block_matrices, session.n_blocks), evaluator=None)
    random.seed(seed)
    found = []
    while len(found) < count:
        ratios = search.ratios_of(search.random_individual())
        if ratios is not None and ratios not in found:
            found.append(ratios)
    return found


def measure(layout, config, jobs_by_fidelity, repeats):
    tic = time.perf_counter()
    pool = open_pool({config.model: (config, "wiki/validation", 4, "ppl")}, layout, None, config.device)
    result = {"startup_s": time.perf_counter() - tic, "workers": pool.size}
    try:
        for label, jobs in jobs_by_fidelity.items():
            pool.map("losses", jobs[:1])  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                pool.map("losses", jobs)
                times.append(time.perf_counter() - start)
            result[label] = {"batch_s": statistics.median(times), "candidates_per_min": 60 * len(jobs) / statistics.median(times)}
        calls = []
        for _ in range(20):
            start = time.perf_counter()
            pool.call("info")
            calls.append(time.perf_counter() - start)
        result["empty_call_ms"] = 1000 * statistics.median(calls)
        result["memory"] = pool.call("memory")
        result["worker"] = pool.call("info")  # its device, and the GPU Ray gave it
    finally:
        pool.close()
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu", help="cpu, cuda (Ray actors then take one GPU each)")
    parser.add_argument("--out", default="results/bench_workers.json")
    args = parser.parse_args()
    config = ModelConfig(model=args.model, device=args.device)
    ratios = allocations(EvaluationSession(config), args.candidates)
    jobs = {"screen": [(r, [0]) for r in ratios], "full": [(r, [0, 1, 2, 3]) for r in ratios]}
    result = {"model": args.model, "device": args.device, "candidates": args.candidates,
              "request_bytes": len(pickle.dumps(jobs["full"][0])), "reply_bytes": len(pickle.dumps([1.0] * 4))}
    for layout in args.layouts:
        result[f"workers={layout}"] = measure(layout, config, jobs, args.repeats)
        print(json.dumps({layout: result[f"workers={layout}"]}), flush=True)
        if ray.is_initialized():
            ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

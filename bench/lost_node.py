"""A search across a simulated two-node Ray cluster that loses its second node mid-generation.

    python bench/lost_node.py --generations 3 --lose-after 20

Two Ray nodes on this machine (a head and a second node, one core each, as `ray start --head` and
`ray start --address` on two machines give), one worker on each. The same search runs twice:
undisturbed, then with every process of the second node SIGKILLed --lose-after seconds into the
first screening batch (the machine is gone). Reported: wall time of each run, the time lost, the
jobs run again on the head, the workers left, whether the results are identical, and what the
search printed to stderr (what a user sees) -> results/bench_lost_node.json.
"""
import argparse
import contextlib
import dataclasses
import io
import json
import logging
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dsa.distributed.pool import RayPool  # noqa: E402
from dsa.search import runner  # noqa: E402
from dsa.search.evolution import SearchConfig  # noqa: E402
from dsa.core.storage import atomic_write_text  # noqa: E402

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
SAME = ("evaluations", "windows_evaluated", "cache_hits", "history")


def timed_search(config, address) -> tuple[dict, float, str]:
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        report = runner.run(config, workers=2, address=address)
    return report, time.perf_counter() - start, err.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--lose-after", type=float, default=20.0, help="seconds into the first screening batch")
    parser.add_argument("--out", default="results/bench_lost_node.json")
    args = parser.parse_args()
    search = SearchConfig(generations=args.generations)
    base = runner.RunConfig(report_texts=("wiki/test",), report_windows=2, rank_check=0,
                            report_baselines=("uniform",), results_dir="results/bench_lost_node",
                            checkpoint_dir="checkpoints/bench_lost_node", search=search)
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    second = cluster.add_node(**NODE)
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    lose = lambda: second.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
    original_map = RayPool.map_routed
    fired = {}

    def map_and_lose_node(pool, method, jobs, desc=None):
        if desc == "screening" and not fired:
            fired["at"] = time.perf_counter()
            threading.Timer(args.lose_after, lose).start()
        return original_map(pool, method, jobs, desc)

    try:
        calm, calm_s, _ = timed_search(dataclasses.replace(base, name="calm"), cluster.address)
        RayPool.map_routed = map_and_lose_node
        lost, lost_s, seen = timed_search(dataclasses.replace(base, name="lost"), cluster.address)
    finally:
        RayPool.map_routed = original_map
        ray.shutdown()
        cluster.shutdown()
    result = {"generations": args.generations, "lose_after_s": args.lose_after,
              "calm_wall_s": calm_s, "lost_wall_s": lost_s, "time_lost_s": lost_s - calm_s,
              "evaluations": calm["evaluations"], "reruns": lost["workers"]["reruns"],
              "workers_left": lost["workers"]["count"],
              "identical": all(calm[k] == lost[k] for k in SAME) and calm["best"] == lost["best"],
              "stderr_warnings": [line for line in seen.splitlines() if line.startswith("warning:")]}
    print(json.dumps(result, indent=2))
    atomic_write_text(args.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

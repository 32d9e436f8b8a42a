"""float32 vs bfloat16 (vs float16) on one device: load and calibration time, memory, perplexity, pruning.

    python bench/dtypes.py --sparsity 0.7 --threads 1
    python bench/dtypes.py --device cuda --dtypes float32 bfloat16 float16

For each dtype, one EvaluationSession (model load, calibration, score orders); dense perplexity
on wiki/test; the search's form (cached Wanda at uniform ratios) and the final pruner
(sequential Wanda) at --sparsity, with their wall times. On a GPU, bf16 is the default dtype;
on a CPU it is an option (`--dtype bfloat16`) whose cost and accuracy this table shows.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dsa.core.storage import atomic_write_text  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig  # noqa: E402


def timed(work):
    start = time.perf_counter()
    value = work()
    return value, time.perf_counter() - start


def measure(model: str, device: str, dtype: str, sparsity: float, text: str, windows: int) -> dict:
    session, load_s = timed(lambda: EvaluationSession(ModelConfig(model=model, device=device, dtype=dtype)))
    ratios = [sparsity] * session.n_blocks
    dense, dense_s = timed(lambda: session.perplexities([text], windows)[text])
    session.prune_cached(ratios)
    cached, cached_s = timed(lambda: session.perplexities([text], windows)[text])
    achieved, prune_s = timed(lambda: session.prune(ratios, "wanda"))
    sequential = session.perplexities([text], windows)[text]
    session.restore()
    return {"dtype": dtype, "load_and_calibrate_s": load_s, "memory": session.memory(),
            "ppl_dense": dense, "ppl_seconds": dense_s, "ppl_cached_wanda": cached, "cached_ppl_seconds": cached_s,
            "ppl_sequential_wanda": sequential, "sequential_prune_s": prune_s, "achieved": achieved}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--text", default="wiki/test")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--out", default="results/bench_dtypes.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dtype in args.dtypes:
        rows.append(measure(args.model, args.device, dtype, args.sparsity, args.text, args.windows))
        print(json.dumps(rows[-1]), flush=True)
    result = {"model": args.model, "device": args.device, "sparsity": args.sparsity, "text": args.text, "windows": args.windows,
              "threads": args.threads, "rows": rows}
    atomic_write_text(args.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Where the time of the evaluation pipeline goes (feeds BENCHMARKS.md).

    python bench/pipeline.py [--model smollm2-135m] [--repeats 5]

Model load (first, from GGUF, vs cached safetensors), calibration pass, score sorting, re-pruning
at a new ratio vector (incremental and from dense), one validation perplexity evaluation, and the
perplexity gap between the cached (dense-activation) and the faithful sequential Wanda.
Medians of --repeats runs; all ratios come from the same run.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluators import assets  # noqa: E402
from evaluators.calibration import _measure_norms, sort_rows  # noqa: E402
from evaluators.models import load_model  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_load_seconds(model: str) -> float:
    """Load with an empty model cache (wheels reused, so no download is timed)."""
    wheels = assets.cache_dir() / "wheels"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(wheels, Path(tmp) / "wheels")
        old = os.environ.get("DSA_CACHE")
        os.environ["DSA_CACHE"] = tmp
        try:
            start = time.perf_counter()
            load_model(model, device="cpu")
            return time.perf_counter() - start
        finally:
            if old is None:
                del os.environ["DSA_CACHE"]
            else:
                os.environ["DSA_CACHE"] = old


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/bench_pipeline.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    session = EvaluationSession(ModelConfig(model=args.model))  # warm caches
    calibrated = session.calibrated
    n = len(calibrated.blocks)
    r = {"model": args.model, "threads": torch.get_num_threads(), "config": calibrated.config.as_dict()}
    r["load_first_s"] = first_load_seconds(args.model)
    r["load_cached_s"] = timed(lambda: load_model(args.model, device="cpu"), args.repeats)
    r["calibration_s"] = timed(lambda: _measure_norms(calibrated.loaded, calibrated.calib, calibrated.config.batch_size), 3)
    r["calibration_tokens"] = calibrated.calib.numel()
    r["sort_scores_s"] = timed(lambda: sort_rows(calibrated.loaded, calibrated.norms, "wanda"), 3)
    vectors = [(0.7 + 0.08 * (2 * torch.rand(n) - 1)).tolist() for _ in range(args.repeats + 1)]
    it = iter(vectors)
    calibrated.pruner.prune(vectors[0])
    r["reprune_incremental_s"] = timed(lambda: calibrated.pruner.prune(next(it)), args.repeats)
    def from_dense():
        calibrated.pruner.restore()
        calibrated.pruner.prune(vectors[0])
    r["reprune_from_dense_s"] = timed(from_dense, args.repeats)
    val = calibrated.windows("wiki/validation", 4)
    r["eval_tokens"] = val.numel()
    r["eval_s"] = timed(lambda: calibrated.window_nll(val), args.repeats)
    r["reprune_over_eval"] = r["reprune_incremental_s"] / r["eval_s"]
    gap = {}
    for sparsity in (0.5, 0.7):
        row = {}
        for form in ("cached", "sequential"):
            session.prune([sparsity] * n, "wanda", None, form)
            row[form] = calibrated.perplexity("wiki/validation", 8)
        gap[str(sparsity)] = row
    calibrated.pruner.restore()
    r["wanda_cached_vs_sequential_val_ppl"] = gap
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=2))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()

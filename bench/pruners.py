"""Wanda vs SparseGPT vs ALPS: per-layer reconstruction error and time, and whole-model perplexity.

    python bench/pruners.py                       # layer errors (block 3: k_proj, up_proj) at 60 / 70 %
    python bench/pruners.py --model-ppl --function results/default70/best.json

Layer part: one real layer of smollm2-135m, its inputs X from the calibration windows (dense
model), relative error ||X W^T - X W'^T|| / ||X W^T|| and wall time of each pruner (one thread).
Model part (--model-ppl): the whole model pruned sequentially by each pruner at uniform ratios
and at a searched function's allocation (the function replayed at each sparsity, or the best
ratios of a search report), perplexity on wiki/validation and wiki/test.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dsa.functions.replay import function_ratios, load_function  # noqa: E402
from evaluators.pruners.alps import alps_prune  # noqa: E402
from evaluators.capture import InputStats, StopForward, raise_stop  # noqa: E402
from evaluators.pruners.sparsegpt import sparsegpt_prune  # noqa: E402
from evaluators.pruners.wanda import wanda_prune_rows  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig  # noqa: E402


def layer_inputs(session, block: int, name: str):
    """(dense weight, H = X^T X, X) of one layer, the forward stopped right after it."""
    calibrated = session.calibrated
    layer = calibrated.blocks[block].linears[name]
    stats, seen = InputStats(need_hessian=True), []
    handles = [layer.register_forward_hook(stats), layer.register_forward_hook(lambda m, i, o: seen.append(i[0])),
               layer.register_forward_hook(raise_stop)]
    try:
        with torch.no_grad():
            for start in range(0, len(calibrated.calib), calibrated.config.batch_size):
                try:
                    calibrated.loaded.model(calibrated.calib[start:start + calibrated.config.batch_size], use_cache=False)
                except StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    x = torch.cat([t.detach().flatten(0, -2).float() for t in seen])
    return layer.weight.detach().float().clone(), stats, x


def layer_rows(session, layers, ratios):
    rows = []
    for block, name in layers:
        weight, stats, x = layer_inputs(session, block, name)
        reference = (x @ weight.T).norm()
        for ratio in ratios:
            for pruner in ("wanda", "sparsegpt", "alps"):
                out = weight.clone()
                start = time.perf_counter()
                if pruner == "wanda":
                    wanda_prune_rows(out, stats.sq, ratio, None)
                elif pruner == "sparsegpt":
                    sparsegpt_prune(out, stats.hessian, ratio, None)
                else:
                    out = alps_prune(weight, stats.hessian, ratio)
                seconds = time.perf_counter() - start
                error = float((x @ (weight - out).T).norm() / reference)
                rows.append({"layer": f"{block}.{name}", "ratio": ratio, "pruner": pruner, "rel_error": error,
                             "seconds": seconds, "zeros": float((out == 0).float().mean())})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def model_rows(session, sparsities, best, function, only=None):
    rows = []
    for sparsity in sparsities:
        allocations = {"uniform": [sparsity] * session.n_blocks}
        if best and abs(best["sparsity"] - sparsity) < 1e-9:
            allocations["best"] = best["ratios"]
        if function:
            allocations["function"], _ = function_ratios(function, session.block_matrices, session.n_blocks,
                                                         session.sizes, sparsity)
        allocations = {name: r for name, r in allocations.items() if not only or name in only}
        for name, ratios in allocations.items():
            for pruner in ("wanda", "sparsegpt", "alps"):
                start = time.perf_counter()
                achieved = session.prune(ratios, pruner)
                seconds = time.perf_counter() - start
                ppl = session.perplexities(["wiki/validation", "wiki/test"], 8)
                rows.append({"sparsity": sparsity, "allocation": name, "pruner": pruner, "achieved": achieved,
                             "prune_seconds": seconds, **ppl})
                print(json.dumps(rows[-1]), flush=True)
    session.restore()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.6, 0.7], help="sparsities")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-ppl", action="store_true", help="also prune the whole model with each pruner")
    parser.add_argument("--best", default=None, help="a search's report.json: its best allocation joins the table")
    parser.add_argument("--function", default=None, help="a function file: its allocation at each sparsity joins the table")
    parser.add_argument("--allocations", nargs="+", choices=("uniform", "best", "function"), default=None,
                        help="only these rows of the model table (default: all that apply)")
    parser.add_argument("--skip-layers", action="store_true", help="only the model table")
    parser.add_argument("--out", default="results/bench_pruners.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    session = EvaluationSession(ModelConfig(model=args.model))
    layers = [] if args.skip_layers else [(3, "self_attn.k_proj"), (3, "mlp.up_proj")]
    result = {"model": args.model, "threads": args.threads, "layers": layer_rows(session, layers, args.ratios)}
    if args.model_ppl:
        best = None
        if args.best:
            report = json.loads(Path(args.best).read_text())
            best = {"sparsity": report["config"]["search"]["sparsity"], "ratios": report["best"]["ratios"]}
        function = load_function(args.function) if args.function else None
        result["models"] = model_rows(session, args.ratios, best, function, args.allocations)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Prune a model with a sparsity allocation and evaluate it; compare allocations in one table.

  python apply.py --model smollm2-135m --allocation owl --sparsity 0.7 --json results/owl70.json
  python apply.py compare --sparsity 0.5 0.6 0.7 --allocations uniform owl alphapruning
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dsa.allocate import METHODS, BaselineOptions, baseline_ratios
from dsa.comparison import write_comparison
from dsa.function import describe
from dsa.replay import function_ratios, load_function
from dsa.runner import block_mats_of
from evaluators.errors import UserError, exits_cleanly
from evaluators.final import PRUNERS, WANDA_FORMS, evaluate, prune_model
from evaluators.pruning import parse_structure
from evaluators.workbench import BenchConfig, Workbench

DEFAULT_EVAL = ["wiki/validation", "wiki/test"]


def _sparsity(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity {value} is outside (0, 1)")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="built-in alias (smollm2-135m, gemma3-270m), hub id, HF directory or .gguf file (default: %(default)s)")
    parser.add_argument("--pruner", choices=PRUNERS, default="wanda", help="final pruner (default: %(default)s)")
    parser.add_argument("--structure", default=None, help="N:M pattern such as 2:4 (default: unstructured)")
    parser.add_argument("--wanda-form", choices=WANDA_FORMS, default="sequential",
                        help="sequential: activations through the pruned blocks (faithful); cached: dense scores, as in search (default: %(default)s)")
    parser.add_argument("--calib", default="c4/train", help="calibration text (default: %(default)s)")
    parser.add_argument("--calib-windows", type=int, default=16, help="calibration windows (default: %(default)s)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window (default: %(default)s)")
    parser.add_argument("--eval", nargs="+", default=DEFAULT_EVAL, metavar="TEXT",
                        help="texts to report perplexity on (default: %(default)s)")
    parser.add_argument("--eval-windows", type=int, default=8, help="windows per evaluated text (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16/fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold M (default: %(default)s)")
    parser.add_argument("--owl-lambda", type=float, default=0.08, help="OWL ratio spread lambda (default: %(default)s)")
    parser.add_argument("--alpha-eps", type=float, default=0.3, help="AlphaPruning ratio spread eps (default: %(default)s)")
    parser.add_argument("--alpha-mode", choices=("peak", "mid"), default="peak",
                        help="PL_Alpha_Hill xmin choice (default: %(default)s)")


def _bench(args) -> Workbench:
    if args.seqlen < 2 or args.calib_windows < 1 or args.eval_windows < 1 or args.batch_size < 1:
        raise UserError("--seqlen must be >= 2 and window counts and --batch-size >= 1")
    metric = "magnitude" if args.pruner == "magnitude" else "wanda"
    return Workbench(BenchConfig(model=args.model, metric=metric, calib_text=args.calib,
                                 calib_windows=args.calib_windows, seqlen=args.seqlen,
                                 batch_size=args.batch_size, device=args.device, dtype=args.dtype))


def _options(args) -> BaselineOptions:
    return BaselineOptions(args.owl_m, args.owl_lambda, args.alpha_eps, args.alpha_mode)


def _ratios(args, bench, function):
    if function is not None:
        return function_ratios(function, block_mats_of(bench), len(bench.blocks), bench.sizes, args.sparsity)
    return baseline_ratios(args.allocation, bench, args.sparsity, _options(args))


def run(args) -> dict:
    nm = parse_structure(args.structure)
    function = load_function(args.function) if args.function else None  # fail before loading a model
    start = time.perf_counter()
    bench = _bench(args)
    ratios, metric = _ratios(args, bench, function)
    label = "function" if function is not None else args.allocation
    dense = evaluate(bench, args.eval, args.eval_windows, "dense")
    achieved = prune_model(bench, ratios, args.pruner, nm, args.wanda_form)
    pruned = evaluate(bench, args.eval, args.eval_windows, label)
    report = {
        "model": args.model, "pruner": args.pruner, "wanda_form": args.wanda_form,
        "structure": args.structure or "unstructured", "allocation": label, "function": function,
        "options": vars(_options(args)), "sparsity": args.sparsity, "achieved_sparsity": achieved,
        "ratios": ratios, "block_metric": metric, "dense_ppl": dense, "ppl": pruned,
        "config": bench.config.as_dict() | {"eval_windows": args.eval_windows},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    for text in args.eval:
        print(f"{text}: dense {dense[text]:.3f}  {label}@{args.sparsity:g} {pruned[text]:.3f}")
    print(f"achieved sparsity {achieved:.5f} (target {args.sparsity})")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"report written to {path}")
    return report


def compare(args) -> None:
    nm = parse_structure(args.structure)
    bench = _bench(args)
    dense = evaluate(bench, args.eval, args.eval_windows, "dense")
    rows, allocations = [], {}
    for sparsity in args.sparsity:
        for method in args.allocations:
            ratios, _ = baseline_ratios(method, bench, sparsity, _options(args))
            achieved = prune_model(bench, ratios, args.pruner, nm, args.wanda_form)
            ppl = evaluate(bench, args.eval, args.eval_windows, f"{method}@{sparsity:g}")
            rows.append({"method": method, "sparsity": sparsity, "achieved": achieved, **ppl})
            allocations[(method, sparsity)] = ratios
            print(f"{method:>12} @ {sparsity:g}: " + "  ".join(f"{t} {v:.3f}" for t, v in ppl.items()), flush=True)
    bench.pruner.restore()
    out = Path(args.out or f"results/compare-{Path(args.model).name}-{args.pruner}")
    table = write_comparison(out, args.model, args.pruner, dense, rows, allocations)
    print(table)
    print(f"written to {out}/ (table.md, table.csv, ratios.png)")


def show(args) -> None:
    function = load_function(args.file)
    stages = {k: function[k] for k in ("importance", "transform", "post", "map") if k in function}
    print("stages:", json.dumps(stages))
    print(describe(function))
    if args.model:
        bench = _bench(args)
        ratios, values = function_ratios(function, block_mats_of(bench), len(bench.blocks), bench.sizes, args.sparsity)
        print(f"\n{args.model} at {args.sparsity:g}:\nblock  importance  ratio")
        for index, (value, ratio) in enumerate(zip(values, ratios)):
            print(f"{index:5d}  {value:10.4g}  {ratio:.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    prune = sub.add_parser("run", help="prune with one allocation and evaluate (the default command)")
    _common(prune)
    chosen = prune.add_mutually_exclusive_group()
    chosen.add_argument("--allocation", choices=METHODS, default="uniform", help="allocation method (default: %(default)s)")
    chosen.add_argument("--function", default=None, metavar="FILE", help="a discovered function (results/<run>/best.json)")
    prune.add_argument("--sparsity", type=_sparsity, default=0.5, help="global sparsity in (0, 1) (default: %(default)s)")
    prune.add_argument("--json", default=None, help="write the JSON report here")
    table = sub.add_parser("compare", help="table of allocations x sparsities (markdown, CSV, ratio plot)")
    _common(table)
    table.add_argument("--sparsity", type=_sparsity, nargs="+", default=[0.5, 0.6, 0.7])
    table.add_argument("--allocations", nargs="+", choices=METHODS, default=list(METHODS))
    table.add_argument("--out", default=None, help="output directory (default: results/compare-MODEL-PRUNER)")
    inspect = sub.add_parser("show", help="a function file's formula; with --model, its per-block values and ratios")
    inspect.add_argument("file")
    _common(inspect)
    inspect.set_defaults(model=None)
    inspect.add_argument("--sparsity", type=_sparsity, default=0.7, help="(default: %(default)s)")
    return parser


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "compare", "show", "-h", "--help"):
        argv.insert(0, "run")  # `apply.py --model ...` means `apply.py run --model ...`
    args = build_parser().parse_args(argv)
    {"run": run, "compare": compare, "show": show}[args.command](args)


if __name__ == "__main__":
    main()

"""Prune a model with a sparsity allocation and evaluate it; compare allocations in one table.

  python apply.py --model smollm2-135m --allocation owl --sparsity 0.7 --json results/owl70.json
  python apply.py --function results/run/best.json --sparsity 0.7 --save pruned/ --eval-zero-shot standard
  python apply.py compare --sparsity 0.5 0.6 0.7 --allocations uniform owl alphapruning
  python apply.py show results/run/best.json
  python apply.py diff a.json b.json --model smollm2-135m
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from dsa.allocation.allocate import METHODS, BaselineOptions
from dsa.core.constants import DLP_ALPHA, OWL_LAMBDA, OWL_M, alpha_eps_for
from dsa.functions import guards, library
from dsa.functions.files import describe, importance_expr, map_of, same_formula
from dsa.functions.replay import function_ratios, load_function
from dsa.outputs.comparison import write_comparison
from dsa.protocol import one_model
from dsa.protocol.grids import Choosing
from dsa.protocol.session import SessionMeasurer
from dsa.outputs.export import check_exportable, check_save_dir, llmcompressor_recipe, save_pruned, write_recipe
from dsa.core.storage import atomic_write_text
from dsa.core.paths import check_new_output_dir, check_output_file
from dsa.core.errors import UserError, exits_cleanly
from evaluators.pruners import parse_structure
from evaluators.session import PRUNERS, WANDA_FORMS, EvaluationSession
from evaluators.calibrated import ModelConfig, check_text
from evaluators.zeroshot import ZeroShot

DEFAULT_EVAL = ["wiki/validation", "wiki/test"]


def _sparsity(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity {value} is outside (0, 1)")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    _model_options(parser)
    _baseline_options(parser)


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The model, the final pruner, the data and the device."""
    defaults = ModelConfig()
    parser.add_argument("--model", default="smollm2-135m",
                        help="built-in alias (smollm2-135m, gemma3-270m, qwen2.5-0.5b), hub id, HF directory or .gguf file (default: %(default)s)")
    parser.add_argument("--pruner", choices=PRUNERS, default="wanda", help="final pruner (default: %(default)s)")
    parser.add_argument("--structure", default=None, help="N:M pattern such as 2:4 (default: unstructured)")
    parser.add_argument("--wanda-form", choices=WANDA_FORMS, default="sequential",
                        help="sequential: activations through the pruned blocks (faithful); cached: dense scores, as in search (default: %(default)s)")
    parser.add_argument("--calib", default=defaults.calib_text, help="calibration text (default: %(default)s)")
    parser.add_argument("--calib-windows", type=int, default=defaults.calib_windows,
                        help="calibration windows (default: %(default)s)")
    parser.add_argument("--seqlen", type=int, default=defaults.seqlen, help="tokens per window (default: %(default)s)")
    parser.add_argument("--eval", nargs="+", default=DEFAULT_EVAL, metavar="TEXT",
                        help="texts to report perplexity on (default: %(default)s)")
    parser.add_argument("--eval-windows", type=int, default=8, help="windows per evaluated text (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="windows per forward pass (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16/fp16 on GPU, fp32 on CPU)")


def _baseline_options(parser: argparse.ArgumentParser) -> None:
    """The baselines' constants, and where ATP's step is chosen."""
    parser.add_argument("--owl-m", type=float, default=OWL_M, help="OWL outlier threshold M (default: %(default)s)")
    parser.add_argument("--owl-lambda", type=float, default=OWL_LAMBDA, help="OWL ratio spread lambda (default: %(default)s)")
    parser.add_argument("--alpha-eps", type=float, default=None,
                        help="AlphaPruning ratio spread eps (default: as its scripts, 0.2 with wanda and "
                             "sparsegpt, 0.3 with magnitude)")
    parser.add_argument("--alpha-mode", choices=("peak", "mid"), default="peak",
                        help="PL_Alpha_Hill xmin choice (default: %(default)s)")
    parser.add_argument("--dlp-alpha", type=float, default=DLP_ALPHA, help="DLP ratio spread alpha (default: %(default)s)")
    parser.add_argument("--atp-step", type=float, default=None,
                        help="ATP's common difference (default: chosen on --atp-text from a grid, with the final pruner)")
    parser.add_argument("--atp-text", nargs="+", default=["wiki/validation"], metavar="TEXT",
                        help="text(s) ATP's difference (and --tune-spread's constant) is chosen on; several: the "
                             "lowest geometric mean of their perplexities; calib-next (the calibration text's "
                             "windows after the calibration ones) and ptb/train read no validation or test text "
                             "to choose (default: wiki/validation)")
    parser.add_argument("--atp-windows", type=int, default=None,
                        help="windows of --atp-text each grid value is measured on (default: --eval-windows; "
                             "16 chose better than 4 on calib-next)")


def _session(args) -> EvaluationSession:
    if args.seqlen < 2 or args.calib_windows < 1 or min(args.eval_windows, _atp_windows(args)) < 1 or args.batch_size < 1:
        raise UserError("--seqlen must be >= 2 and window counts and --batch-size >= 1")
    metric = "magnitude" if args.pruner.startswith("magnitude") else "wanda"
    return EvaluationSession(ModelConfig(model=args.model, metric=metric, calib_text=args.calib,
                                         calib_windows=args.calib_windows, seqlen=args.seqlen,
                                         batch_size=args.batch_size, device=args.device, dtype=args.dtype))


def _options(args) -> BaselineOptions:
    eps = args.alpha_eps if args.alpha_eps is not None else alpha_eps_for(args.pruner)
    return BaselineOptions(args.owl_m, args.owl_lambda, eps, args.alpha_mode, args.dlp_alpha, args.atp_step)


def _atp_windows(args) -> int:
    return args.eval_windows if args.atp_windows is None else args.atp_windows


def _measurer(args, nm) -> SessionMeasurer:
    """The model, the final pruner and the baselines' constants the user chose."""
    return SessionMeasurer(_session(args), args.pruner, nm, args.wanda_form, _options(args))


def _choosing(args) -> Choosing:
    """Where ATP's step and --tune-spread's constant are chosen: --atp-text on --atp-windows; every
    grid point also measured on the --eval texts, so a report shows what each constant gives there."""
    return Choosing(tuple(args.atp_text), _atp_windows(args), tuple(args.eval), args.eval_windows)


def _print_atp(sparsity: float, choice: dict) -> None:
    if "grid" in choice:  # chosen, not the user's --atp-step
        steps = ", ".join(f"{row['step']:.4f}" for row in choice["grid"])
        print(f"ATP at {sparsity:g}: step {choice['step']:.5f} chosen on {choice['chosen_on']} (grid {steps})",
              file=sys.stderr)


def _print_tuning(function: dict, tuning: dict) -> None:
    key = tuning["chosen_on"]
    print(f"--tune-spread: {map_of(function)[0]} map constant {tuning['chosen']:g} chosen on {key} "
          f"(the file's: {tuning['file_constant']:g}; "
          + ", ".join(f"{row['value']:g} {row[key]:.2f}" for row in tuning["grid"]) + ")"
          + (f"; lowest {tuning['lowest']:g} vs the file's: z = {tuning['z']:.2f}" if "z" in tuning else ""),
          file=sys.stderr)


def _check_options(args) -> None:
    """The baselines' constants, checked before any model is loaded."""
    checks = [("--owl-m", args.owl_m, lambda v: v > 0), ("--owl-lambda", args.owl_lambda, lambda v: v >= 0),
              ("--alpha-eps", args.alpha_eps, lambda v: 0 <= v <= 1), ("--dlp-alpha", args.dlp_alpha, lambda v: v >= 0),
              ("--atp-step", args.atp_step, lambda v: 0 <= v < 1)]
    for flag, value, valid in checks:
        if value is not None and not (math.isfinite(value) and valid(value)):
            raise UserError(f"{flag} {value} is out of range")
    for text in [*args.atp_text, *args.eval]:  # a misspelt text fails before the model loads
        check_text(text)


def _check_before_loading(args):
    """Everything a user can get wrong without a model fails here, in seconds, before any pruning."""
    _check_options(args)
    function = load_function(args.function) if args.function else None
    if args.tune_spread and (function is None or args.structure):
        raise UserError("--tune-spread tunes a function's map constant: it needs --function, and no --structure "
                        "(N:M prunes every block alike)")
    if not 0 <= args.tune_z < float("inf"):
        raise UserError("--tune-z must be a finite number >= 0")
    if args.tune_z and not args.tune_spread:
        raise UserError("--tune-z tests the constant --tune-spread chooses: give --tune-spread too")
    if args.tune_z and _atp_windows(args) < 2:
        raise UserError("--tune-z compares windows: --atp-windows (default: --eval-windows) must be >= 2")
    if args.save:
        check_save_dir(args.save)
    if args.export_llmcompressor:
        check_exportable(args.pruner)
        check_output_file(args.export_llmcompressor, "--export-llmcompressor")
    if args.json:
        check_output_file(args.json, "--json")
    if args.finetune_lora:
        if args.finetune_lora < 0 or min(args.lora_windows, args.lora_rank, args.lora_batch_size) < 1 \
                or not (math.isfinite(args.lora_lr) and args.lora_lr > 0):
            raise UserError("--finetune-lora, --lora-windows, --lora-rank and --lora-batch-size must be >= 1, --lora-lr > 0")
        try:
            import peft  # noqa: F401
        except ImportError:
            raise UserError("--finetune-lora needs peft: pip install -e \".[lora]\"")
    if not args.eval_zero_shot:
        if args.tasks_dir or args.zero_shot_limit:
            raise UserError("--tasks-dir and --zero-shot-limit go with --eval-zero-shot")
        return function, None
    return function, ZeroShot(args.eval_zero_shot, args.tasks_dir or (), args.zero_shot_limit, args.batch_size)


def _zero_shot_lines(results: dict[str, dict], label: str) -> list[str]:
    lines = []
    for task, metrics in results[label].items():
        shown = [m for m in ("acc", "acc_norm") if m in metrics] or [m for m in metrics if m != "samples"][:2]
        for metric in shown:
            values = "  ".join(f"{name} {res[task][metric]:.4f}" for name, res in results.items() if task in res)
            lines.append(f"zero-shot {task} {metric}: {values}  ({int(metrics.get('samples', 0))} docs)")
    return lines


def _finetune(args, measurer: SessionMeasurer, label: str) -> dict:
    """LoRA on the pruned model in place (merged, zeros re-applied), then the same texts again."""
    directory = args.lora_checkpoint or (Path("checkpoints") / f"lora-{Path(args.model).name}-{label}-{args.sparsity:g}")
    lora = one_model.finetune(measurer, args.finetune_lora, args.lora_text, args.lora_windows, args.lora_rank,
                              args.lora_lr, args.lora_batch_size, directory, args.eval, args.eval_windows, label)
    for text in args.eval:
        print(f"{text}: after LoRA ({lora['steps']} steps on {args.lora_text}) {lora['ppl'][text]:.3f}")
    return lora


def run(args) -> dict:
    nm = parse_structure(args.structure)
    function, zero_shot = _check_before_loading(args)
    start = time.perf_counter()
    measurer = _measurer(args, nm)
    if function is not None and not args.no_uniform and nm:
        print(f"note: {args.structure} prunes every block {args.structure} whatever the ratios; "
              "no uniform comparison", file=sys.stderr)
    result = one_model.evaluate(measurer, args.sparsity, args.eval, args.eval_windows, _choosing(args),
                                function=function, method=args.allocation, atp_step=args.atp_step,
                                tune_spread=args.tune_spread, tune_z=args.tune_z,
                                uniform=function is not None and not args.no_uniform and not nm, zero_shot=zero_shot)
    if "atp" in result["options"]:
        _print_atp(args.sparsity, result["options"]["atp"])
    if result["tune_spread"]:
        _print_tuning(result["function"], result["tune_spread"])
    lora = _finetune(args, measurer, result["allocation"]) if args.finetune_lora else None
    calibrated = measurer.session.calibrated
    report = {"model": args.model, "pruner": args.pruner, "wanda_form": args.wanda_form,
              "structure": args.structure or "unstructured", **result, "lora": lora,
              "config": calibrated.config.as_dict() | {"eval_windows": args.eval_windows}}
    _print_result(args, report)
    _write_outputs(args, report, calibrated, nm)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
        print(f"report written to {args.json}")
    return report


def _print_result(args, report: dict) -> None:
    label, uniform = report["allocation"], report["uniform_ppl"]
    for text in args.eval:
        versus = f"  uniform@{args.sparsity:g} {uniform[text]:.3f}" if uniform else ""
        print(f"{text}: dense {report['dense_ppl'][text]:.3f}{versus}  {label}@{args.sparsity:g} {report['ppl'][text]:.3f}")
    if report["zero_shot"] is not None:
        runs = ({"uniform": report["uniform_zero_shot"]} if uniform else {}) | {label: report["zero_shot"]}
        print("\n".join(_zero_shot_lines(runs, label)))
    print(f"achieved sparsity {report['achieved_sparsity']:.5f} (target {args.sparsity})")


def _write_outputs(args, report: dict, calibrated, nm) -> None:
    """The pruned model (--save) and the llm-compressor recipe (--export-llmcompressor)."""
    label, ratios = report["allocation"], report["ratios"]
    block_names = [block.name for block in calibrated.blocks]
    if args.save:
        info = {"format": "dsa-pruned", "version": 1, "source_model": args.model, "allocation": label,
                "function": report["function"], "sparsity": args.sparsity,
                "achieved_sparsity": report["achieved_sparsity"], "ratios": ratios, "block_names": block_names,
                "pruner": args.pruner, "wanda_form": args.wanda_form, "structure": args.structure or "unstructured",
                "data": {k: calibrated.config.as_dict()[k] for k in ("calib_text", "calib_windows", "seqlen")},
                "ppl": report["ppl"], "eval_windows": args.eval_windows}
        report["saved_to"] = str(save_pruned(calibrated.loaded, args.save, info))
        print(f"pruned model saved to {args.save} (AutoModelForCausalLM.from_pretrained loads it)")
    if args.export_llmcompressor:
        recipe = llmcompressor_recipe(block_names, ratios, args.pruner, nm)
        header = [f"dsa allocation for {args.model}: {label} at sparsity {args.sparsity:g}, "
                  f"{args.pruner}, {args.structure or 'unstructured'}",
                  "one sparsity per decoder block, in model order (llm-compressor's oneshot(model, recipe=...))"]
        report["llmcompressor_recipe"] = str(write_recipe(args.export_llmcompressor, recipe, header))
        print(f"llm-compressor recipe written to {args.export_llmcompressor}")


def compare(args) -> None:
    nm = parse_structure(args.structure)
    _check_options(args)
    out = Path(args.out or f"results/compare-{Path(args.model).name}-{args.pruner}")
    check_new_output_dir(out, "--out", "it holds an earlier table: choose a new --out")
    measurer = _measurer(args, nm)
    dense = measurer.dense(measurer.model, args.eval, args.eval_windows)
    rows, allocations, atp_choices = [], {}, {}
    for row, ratios, atp in one_model.compare(measurer, args.sparsity, args.allocations, args.eval,
                                              args.eval_windows, _choosing(args), args.atp_step):
        method, sparsity = row["method"], row["sparsity"]
        if atp is not None:
            _print_atp(sparsity, atp)
            atp_choices[f"{sparsity:g}"] = atp
        rows.append(row)
        allocations[(method, sparsity)] = ratios
        print(f"{method:>12} @ {sparsity:g}: " + "  ".join(f"{t} {row[t]:.3f}" for t in dict.fromkeys(args.eval)),
              flush=True)
    table = write_comparison(out, args.model, args.pruner, dense, rows, allocations, atp_choices)
    print(table)
    print(f"written to {out}/ (table.md, table.csv, ratios.png{', atp.json' if atp_choices else ''})")


def list_functions(args) -> None:
    """The function library, one line each: what a name given to --function or show stands for."""
    for name in library.names():
        document = load_function(name)
        print(library.summary_line(name, document, str(importance_expr(document))))


def show(args) -> None:
    function = load_function(args.file)
    stages = {k: function[k] for k in ("importance", "transform", "post", "map") if k in function}
    print("stages:", json.dumps(stages))
    print(describe(function))
    if args.model:
        session = _session(args)
        ratios, values = function_ratios(function, session.block_matrices, session.n_blocks, session.sizes,
                                         args.sparsity)
        print(f"\n{args.model} at {args.sparsity:g}:\nblock  importance  ratio")
        for index, (value, ratio) in enumerate(zip(values, ratios)):
            print(f"{index:5d}  {value:10.4g}  {ratio:.4f}")
        moved, _ = function_ratios(function, session.block_matrices, session.n_blocks, session.sizes,
                                   args.sparsity, guards.MOVED_GUARDS)  # the same function, every guard moved
        shift = guards.guard_shift(ratios, moved)
        verdict = ("reads a guard (search.py --guard-check rejects it)" if shift > guards.GUARD_TOLERANCE
                   else "reads no guard")
        print(f"guard check: {verdict}: with the ops' guards moved a ratio moves by at most {shift:.3g} "
              f"(tolerance {guards.GUARD_TOLERANCE:g})")


def diff(args) -> bool:
    """Same formula (sympy)? With --model: same ratios on that model? True when both hold."""
    if not 0 <= args.tolerance < math.inf:  # nan would call a file different from itself
        raise UserError(f"--tolerance {args.tolerance} must be a finite number >= 0")
    first, second = load_function(args.a), load_function(args.b)
    for tag, function in (("A", first), ("B", second)):
        kind, value = map_of(function)
        print(f"{tag}: importance = {importance_expr(function)}; map {kind} {value:g}")
    same, how = same_formula(first, second)
    print(f"same formula: {'yes' if same else 'no'} ({how})")
    if not args.model:
        return same
    session = _session(args)
    ratios_a, _ = function_ratios(first, session.block_matrices, session.n_blocks, session.sizes, args.sparsity)
    ratios_b, _ = function_ratios(second, session.block_matrices, session.n_blocks, session.sizes, args.sparsity)
    gaps = [abs(x - y) for x, y in zip(ratios_a, ratios_b)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    same_ratios = gaps[worst] <= args.tolerance
    print(f"same ratios on {args.model} at {args.sparsity:g}: {'yes' if same_ratios else 'no'} "
          f"(largest difference {gaps[worst]:.3g} at block {worst}, tolerance {args.tolerance:g})")
    return same and same_ratios


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for add in (_run_parser, _compare_parser, _show_parser, _diff_parser, _list_parser):
        add(sub)
    return parser


def _run_parser(sub) -> None:
    prune = sub.add_parser("run", help="prune with one allocation and evaluate (the default command)")
    _common(prune)
    chosen = prune.add_mutually_exclusive_group()
    chosen.add_argument("--allocation", choices=METHODS, default="uniform", help="allocation method (default: %(default)s)")
    chosen.add_argument("--function", default=None, metavar="FILE", help="a discovered function (results/<run>/best.json)")
    prune.add_argument("--sparsity", type=_sparsity, default=0.5, help="global sparsity in (0, 1) (default: %(default)s)")
    prune.add_argument("--json", default=None, help="write the JSON report here")
    prune.add_argument("--tune-spread", action="store_true",
                       help="with --function: choose its map constant (lambda, or eps) on --atp-text with the final "
                            "pruner, from the grid ATP's difference is chosen on: the function's shape, this "
                            "model's amplitude (one prune per grid value); the report keeps the tuned function")
    prune.add_argument("--tune-z", type=float, default=0.0, metavar="Z",
                       help="with --tune-spread: keep the file's own constant unless the grid's lowest beats it by "
                            "more than Z standard errors of the paired per-window difference on --atp-text (needs "
                            "--atp-windows >= 2); with 2 the choice was the test text's best on 8 of 10 grids measured, within 2 %% on "
                            "the others (default: 0: the lowest)")
    prune.add_argument("--no-uniform", action="store_true",
                       help="with --function: skip pruning with uniform ratios for comparison")
    prune.add_argument("--save", default=None, metavar="DIR",
                       help="save the pruned model (safetensors), its tokenizer and dsa.json here")
    prune.add_argument("--export-llmcompressor", default=None, metavar="FILE",
                       help="write an llm-compressor recipe (YAML, or JSON for *.json) with one sparsity per block")
    _zero_shot_options(prune)
    _lora_options(prune)


def _zero_shot_options(prune) -> None:
    prune.add_argument("--eval-zero-shot", nargs="+", default=None, metavar="TASKS",
                       help="lm-eval tasks (names or comma lists; 'standard' = boolq rte hellaswag winogrande "
                            "arc_easy arc_challenge openbookqa) for zero-shot accuracy")
    prune.add_argument("--tasks-dir", action="append", default=None, metavar="DIR",
                       help="a directory of local lm-eval task YAMLs (repeatable)")
    prune.add_argument("--zero-shot-limit", type=int, default=None, metavar="N",
                       help="evaluate only the first N documents of each task (quick checks)")


def _lora_options(prune) -> None:
    prune.add_argument("--finetune-lora", type=int, default=0, metavar="STEPS",
                       help="after pruning, train LoRA adapters for STEPS steps on --lora-text (pruned weights "
                            "frozen), merge them and re-apply the zeros; checkpointed, an interrupted run resumes")
    prune.add_argument("--lora-text", default="c4/train", help="fine-tuning text (default: %(default)s)")
    prune.add_argument("--lora-windows", type=int, default=64, help="fine-tuning windows (default: %(default)s)")
    prune.add_argument("--lora-rank", type=int, default=8, help="(default: %(default)s)")
    prune.add_argument("--lora-lr", type=float, default=1e-4, help="(default: %(default)s)")
    prune.add_argument("--lora-batch-size", type=int, default=2, help="(default: %(default)s)")
    prune.add_argument("--lora-checkpoint", default=None, metavar="DIR",
                       help="fine-tuning checkpoints (default: checkpoints/lora-MODEL-ALLOCATION-SPARSITY)")


def _compare_parser(sub) -> None:
    table = sub.add_parser("compare", help="table of allocations x sparsities (markdown, CSV, ratio plot)")
    _common(table)
    table.add_argument("--sparsity", type=_sparsity, nargs="+", default=[0.5, 0.6, 0.7])
    table.add_argument("--allocations", nargs="+", choices=METHODS, default=list(METHODS))
    table.add_argument("--out", default=None, help="output directory (default: results/compare-MODEL-PRUNER)")


def _show_parser(sub) -> None:
    inspect = sub.add_parser("show", help="a function file's formula; with --model, its per-block values and ratios, and whether they move when the ops' guards move")
    inspect.add_argument("file")
    _common(inspect)
    inspect.set_defaults(model=None)
    inspect.add_argument("--sparsity", type=_sparsity, default=0.7, help="(default: %(default)s)")


def _list_parser(sub) -> None:
    sub.add_parser("list", help="the named functions shipped with dsa (give a name to --function or show), "
                                "with where they were found and their held-out results")


def _diff_parser(sub) -> None:
    differ = sub.add_parser("diff", help="are two function files the same formula, and (with --model) the same ratios?")
    differ.add_argument("a")
    differ.add_argument("b")
    _common(differ)
    differ.set_defaults(model=None)
    differ.add_argument("--sparsity", type=_sparsity, default=0.7, help="(default: %(default)s)")
    differ.add_argument("--tolerance", type=float, default=1e-6,
                        help="largest ratio difference that counts as the same (default: %(default)s)")


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "compare", "show", "diff", "list", "-h", "--help"):
        argv.insert(0, "run")  # `apply.py --model ...` means `apply.py run --model ...`
    args = build_parser().parse_args(argv)
    if args.command == "diff":
        sys.exit(0 if diff(args) else 1)  # as diff(1): 0 the same, 1 different, 2 an error
    {"run": run, "compare": compare, "show": show, "list": list_functions}[args.command](args)


if __name__ == "__main__":
    main()

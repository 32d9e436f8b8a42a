"""Prune a model with a sparsity allocation and evaluate it; compare allocations in one table;
export an allocation's per-block ratios and llm-compressor recipe without pruning.

  python apply.py --model smollm2-135m --allocation owl --sparsity 0.7 --json results/owl70.json
  python apply.py --function results/run/best.json --sparsity 0.7 --save pruned/ --eval-zero-shot standard
  python apply.py compare --sparsity 0.5 0.6 0.7 --allocations uniform owl alphapruning
  python apply.py compare --sparsity 0.7 --allocations uniform atp --function tanh2-ramp-70 --paired
  python apply.py export --function tanh2-ramp-70 --model qwen2.5-0.5b --sparsity 0.7 --out ratios/
  python apply.py show results/run/best.json
  python apply.py diff a.json b.json --model smollm2-135m

Each command's --help lists the options most runs change; --help-all lists every option.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from dsa.allocation.allocate import METHODS, SHAPE_METHODS, BaselineOptions
from dsa.allocation.matrices import MatrixUnits, flatten, matrix_table, parameter_sparsity
from dsa.core.constants import DLP_ALPHA, OWL_LAMBDA, OWL_M, alpha_eps_for
from dsa.functions import guards, library
from dsa.functions.files import describe, importance_expr, is_matrix_function, map_of, same_formula
from dsa.functions.replay import function_ratios, load_function
from dsa.outputs.ratio_files import weighted_mean, write_matrix_ratio_files, write_ratio_files
from dsa.protocol import allocation, one_model
from dsa.protocol.grids import Choosing
from dsa.protocol.session import SessionMeasurer
from dsa.outputs.export import check_exportable, check_save_dir, llmcompressor_recipe, save_pruned, write_recipe
from dsa.core.storage import atomic_write_text
from dsa.core.paths import check_new_output_dir, check_output_file
from dsa.core.errors import UserError, exits_cleanly
from dsa.core.guards import DEFAULT_GUARDS
from evaluators.pruners import parse_structure
from evaluators.pruners.base import is_per_matrix
from evaluators.session import PRUNERS, WANDA_FORMS, EvaluationSession
from evaluators.architecture import Layout, model_layout
from evaluators.calibrated import ModelConfig, check_text
from evaluators.zeroshot import ZeroShot

DEFAULT_EVAL = ["wiki/validation", "wiki/test"]
DEFAULT_SPARSITY = 0.7
COMMANDS = ("run", "compare", "export", "show", "diff", "list")


def _sparsity(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity {value} is outside (0, 1)")
    return value


def _hider(show_all: bool):
    """help= of a rarely changed option: its text under --help-all, hidden under --help (still accepted)."""
    return lambda text: text if show_all else argparse.SUPPRESS


def _model_options(parser, hide) -> None:
    """The model, and the data and device a calibration (a score function, a pruner) runs with."""
    defaults = ModelConfig()
    parser.add_argument("--model", default="smollm2-135m",
                        help="built-in alias (smollm2-135m, gemma3-270m, qwen2.5-0.5b), hub id, HF directory or .gguf "
                             "file (default: %(default)s)")
    parser.add_argument("--calib", default=defaults.calib_text, help=hide("calibration text (default: %(default)s)"))
    parser.add_argument("--calib-windows", type=int, default=defaults.calib_windows,
                        help="calibration windows (default: %(default)s)")
    parser.add_argument("--seqlen", type=int, default=defaults.seqlen, help=hide("tokens per window (default: %(default)s)"))
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=hide("windows per forward pass (default: %(default)s)"))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument("--dtype", default=None, help=hide("float32, bfloat16, float16 (default: bf16/fp16 on GPU, fp32 on CPU)"))


def _pruner_options(parser, hide) -> None:
    """The final pruner and the texts a pruned model is measured on."""
    parser.add_argument("--pruner", choices=PRUNERS, default="wanda", help="final pruner (default: %(default)s)")
    parser.add_argument("--structure", default=None, help="N:M pattern such as 2:4 (default: unstructured)")
    parser.add_argument("--wanda-form", choices=WANDA_FORMS, default="sequential",
                        help=hide("sequential: activations through the pruned blocks (faithful); cached: dense scores, "
                                  "as in search (default: %(default)s)"))
    parser.add_argument("--eval", nargs="+", default=DEFAULT_EVAL, metavar="TEXT",
                        help="texts to report perplexity on (default: %(default)s)")
    parser.add_argument("--eval-windows", type=int, default=8, help="windows per evaluated text (default: %(default)s)")


def _constant_options(parser, hide) -> None:
    """The baselines' constants (ATP's step: chosen by pruning unless given)."""
    parser.add_argument("--owl-m", type=float, default=OWL_M, help=hide("OWL outlier threshold M (default: %(default)s)"))
    parser.add_argument("--owl-lambda", type=float, default=OWL_LAMBDA, help=hide("OWL ratio spread lambda (default: %(default)s)"))
    parser.add_argument("--alpha-eps", type=float, default=None,
                        help=hide("AlphaPruning ratio spread eps (default: 0.2 with wanda and sparsegpt, 0.3 with magnitude)"))
    parser.add_argument("--alpha-mode", choices=("peak", "mid"), default="peak",
                        help=hide("PL_Alpha_Hill xmin choice (default: %(default)s)"))
    parser.add_argument("--dlp-alpha", type=float, default=DLP_ALPHA, help=hide("DLP ratio spread alpha (default: %(default)s)"))
    parser.add_argument("--atp-step", type=float, default=None,
                        help=hide("ATP's common difference (default: chosen on --atp-text from a grid, with the final pruner)"))


def _choosing_options(parser, hide) -> None:
    """Where ATP's step (and --tune-spread's constant) is chosen."""
    parser.add_argument("--atp-text", nargs="+", default=["wiki/validation"], metavar="TEXT",
                        help="text(s) ATP's step and --tune-spread's constant are chosen on; several: lowest geometric "
                             "mean; calib-next and ptb/train read no validation or test text (default: wiki/validation)")
    parser.add_argument("--atp-windows", type=int, default=None,
                        help=hide("windows of --atp-text each grid value is measured on (default: --eval-windows)"))


def _session(args) -> EvaluationSession:
    """The model loaded and calibrated as the model options say (the pruner's metric when there is one)."""
    if args.seqlen < 2 or args.calib_windows < 1 or args.batch_size < 1:
        raise UserError("--seqlen must be >= 2 and --calib-windows and --batch-size >= 1")
    metric = "magnitude" if getattr(args, "pruner", "wanda").startswith("magnitude") else "wanda"
    return EvaluationSession(ModelConfig(model=args.model, metric=metric, calib_text=args.calib,
                                         calib_windows=args.calib_windows, seqlen=args.seqlen,
                                         batch_size=args.batch_size, device=args.device, dtype=args.dtype))


def _model_for(args, functions: list[dict]):
    """What the functions read of the model: its architecture alone (a Layout: seconds, no weight
    read) when they read only depth, else the calibrated model (an EvaluationSession)."""
    if not any(allocation.needs_weights(function) for function in functions):
        return model_layout(args.model)
    return _session(args)


def _flat_ratios(function: dict, model, sparsity: float, moved: bool = False) -> tuple[list[float], list[float], list[str]]:
    """(ratios, importance values, a label per entry) of a function on a Layout or a session: one
    entry per block, or per matrix for a per-matrix function ('block 3 v'); `moved`: every guard moved."""
    blocks = model.blocks if isinstance(model, Layout) else model.calibrated.blocks
    units = MatrixUnits.of(blocks) if is_matrix_function(function) else None
    ratios, values = function_ratios(function, model.block_matrices, model.n_blocks, model.sizes, sparsity,
                                     guards.MOVED_GUARDS if moved else DEFAULT_GUARDS, units)
    labels = ([f"{index:5d} {role:>4}" for index, _, role, _ in matrix_table(blocks)] if units
              else [f"{index:5d}" for index in range(len(ratios))])
    return ratios, values, labels


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
    """The windows, the baselines' constants and the texts, checked before any model is loaded."""
    if args.seqlen < 2 or min(args.calib_windows, args.eval_windows, _atp_windows(args), args.batch_size) < 1:
        raise UserError("--seqlen must be >= 2 and window counts and --batch-size >= 1")
    _check_constants(args)
    for text in [*args.atp_text, *args.eval]:  # a misspelt text fails before the model loads
        check_text(text)


def _check_constants(args) -> None:
    checks = [("--owl-m", args.owl_m, lambda v: v > 0), ("--owl-lambda", args.owl_lambda, lambda v: v >= 0),
              ("--alpha-eps", args.alpha_eps, lambda v: 0 <= v <= 1), ("--dlp-alpha", args.dlp_alpha, lambda v: v >= 0),
              ("--atp-step", args.atp_step, lambda v: 0 <= v < 1)]
    for flag, value, valid in checks:
        if value is not None and not (math.isfinite(value) and valid(value)):
            raise UserError(f"{flag} {value} is out of range")


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
    elif args.save_format != "dense":
        raise UserError("--save-format chooses how --save writes the model: give --save DIR too")
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
                "ppl": report["ppl"], "eval_windows": args.eval_windows, "weights": args.save_format}
        report["saved_to"] = str(save_pruned(calibrated.loaded, args.save, info, args.save_format))
        print(f"pruned model saved to {args.save} " + ("(AutoModelForCausalLM.from_pretrained loads it)"
              if args.save_format == "dense" else "(sparse-bitmask; apply.py --model DIR and dsa.load_model load it)"))
    if args.export_llmcompressor:
        report["llmcompressor_recipe"] = str(_write_recipe(args.export_llmcompressor, args, label, block_names,
                                                           ratios, nm))
        print(f"llm-compressor recipe written to {args.export_llmcompressor}")


def _write_recipe(path, args, label: str, block_names: list[str], ratios: list[float], nm=None) -> Path:
    """The llm-compressor recipe of one allocation: one sparsity per decoder block (run, export)."""
    recipe = llmcompressor_recipe(block_names, ratios, args.pruner, nm)
    structure = getattr(args, "structure", None) or "unstructured"
    unit = "prunable matrix, by module name" if is_per_matrix(ratios) else "decoder block, in model order"
    header = [f"dsa allocation for {args.model}: {label} at sparsity {args.sparsity:g}, {args.pruner}, {structure}",
              f"one sparsity per {unit} (llm-compressor's oneshot(model, recipe=...))"]
    return write_recipe(path, recipe, header)


def compare(args) -> None:
    nm = parse_structure(args.structure)
    _check_options(args)
    functions = _labelled_functions(args.function or [])
    if args.paired and (not functions or args.eval_windows < 2):
        raise UserError("--paired tests each --function against each baseline window by window: it needs --function "
                        "and --eval-windows >= 2")
    out = Path(args.out or f"results/compare-{Path(args.model).name}-{args.pruner}")
    check_new_output_dir(out, "--out", "it holds an earlier table: choose a new --out")
    measurer = _measurer(args, nm)
    dense = measurer.dense(measurer.model, args.eval, args.eval_windows)
    rows, allocations, atp_choices, losses = [], {}, {}, {}
    for row, ratios, atp, logppl in one_model.compare(measurer, args.sparsity, args.allocations, args.eval,
                                                      args.eval_windows, _choosing(args), args.atp_step,
                                                      functions, per_window=args.paired):
        key = (row["method"], row["sparsity"])
        if atp is not None:
            _print_atp(key[1], atp)
            atp_choices[f"{key[1]:g}"] = atp
        rows.append(row)
        allocations[key] = ratios
        losses[key] = logppl
        print(f"{key[0]:>12} @ {key[1]:g}: " + "  ".join(f"{t} {row[t]:.3f}" for t in dict.fromkeys(args.eval)),
              flush=True)
    from dsa.outputs.comparison import write_comparison  # matplotlib: only the table's command pays for it

    print(write_comparison(out, args.model, args.pruner, dense, rows, allocations, atp_choices))
    written = ["table.md", "table.csv", "ratios.png"] + (["atp.json"] if atp_choices else [])
    if args.paired:
        written += _write_paired(out, one_model.paired_rows(losses, list(functions)), losses)
    print(f"written to {out}/ ({', '.join(written)})")


def _labelled_functions(specs: list[str]) -> dict[str, dict]:
    """--function's files or library names, each validated (before any model loads), by the label
    its table row gets: the library name, or the file's stem (its path where that is taken)."""
    functions = {}
    for spec in specs:
        label = spec if library.path_of(spec) else Path(spec).stem
        if label in functions or label in METHODS:
            label = spec
        if label in functions:
            raise UserError(f"--function {spec} is given twice")
        functions[label] = load_function(spec)
    return functions


def _write_paired(out: Path, rows: list[dict], losses: dict) -> list[str]:
    """The paired table (printed, paired.md) and its rows with every window's log-perplexity (paired.json)."""
    lines = ["Paired over the windows: mean per-window log-ratio of perplexity (function minus baseline) "
             "± its standard error; |z| under about 2 is a tie.", "",
             "| sparsity | function | against | text | function ppl | its ppl | function vs it | mean log-ratio ± SE "
             "| z | windows lower |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sparsity']:.0%} | {r['function']} | {r['against']} | {r['text']} | {r['perplexity']:.2f} | "
              f"{r['against_perplexity']:.2f} | {100 * r['ratio']:+.1f} % | {r['difference']:+.4f} ± "
              f"{r['standard_error']:.4f} | {r['z']:+.2f} | {r['windows_lower']} of {r['windows']} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    atomic_write_text(out / "paired.md", table)
    windows = {f"{label}@{sparsity:g}": values for (label, sparsity), values in losses.items()}
    atomic_write_text(out / "paired.json", json.dumps({"rows": rows, "window_log_ppl": windows}, indent=1))
    return ["paired.md", "paired.json"]


def export(args) -> None:
    """An allocation's ratios (ratios.json, ratios.csv) and llm-compressor recipe, without pruning;
    from the model's architecture alone when the allocation reads only depth or shapes."""
    function, label = _check_export(args)
    out = Path(args.out or f"results/export-{Path(args.model).name}-{label}-{args.sparsity:g}")
    check_new_output_dir(out, "--out", "it holds an earlier export: choose a new --out")
    start = time.perf_counter()
    weights = allocation.needs_weights(function, args.allocation)
    model = _session(args) if weights else model_layout(args.model)
    names, sizes = allocation.block_names_and_sizes(model)
    info = {"model": args.model, "allocation": label, "function": function, "sparsity": args.sparsity,
            "pruner": args.pruner, "options": None if function else vars(_options(args)),
            "from": "calibrated model" if weights else "architecture (no weights read)",
            "data": model.calibrated.config.as_dict() if weights else None}
    if args.granularity == "matrix":
        _export_matrices(args, out, model, info, names, start)
        return
    ratios, values = allocation.ratios_on(model, args.sparsity, function, args.allocation or "uniform", _options(args))
    paths = write_ratio_files(out, info | {"values": values}, names, sizes, ratios)
    paths.append(_write_recipe(out / _recipe_name(), args, label, names, ratios))
    mean = weighted_mean(ratios, sizes)
    low, high = min(range(len(ratios)), key=ratios.__getitem__), max(range(len(ratios)), key=ratios.__getitem__)
    print(f"{label} on {args.model} at {args.sparsity:g}: {len(ratios)} blocks, ratios {ratios[low]:.4f} (block {low}) "
          f"to {ratios[high]:.4f} (block {high}), parameter-weighted mean {mean:.6f}; from the {info['from']}, "
          f"{time.perf_counter() - start:.1f} s")
    print(f"written to {out}/ ({', '.join(p.name for p in paths)})")


def _export_matrices(args, out: Path, model, info: dict, names: list[str], start: float) -> None:
    """export --granularity matrix: one ratio per prunable matrix, in ratios.csv with its role."""
    ratios, values = allocation.matrix_ratios_on(model, args.sparsity, args.allocation, _options(args),
                                                 function=info["function"])
    blocks = model.blocks if isinstance(model, Layout) else model.calibrated.blocks
    paths = write_matrix_ratio_files(out, info | {"values": values}, blocks, ratios)
    paths.append(_write_recipe(out / _recipe_name(), args, info["allocation"], names, ratios))
    table, flat = matrix_table(blocks), flatten(ratios, blocks)
    low, high = min(range(len(flat)), key=flat.__getitem__), max(range(len(flat)), key=flat.__getitem__)
    where = [f"block {table[i][0]} {table[i][1]}" for i in (low, high)]
    print(f"{info['allocation']} on {args.model} at {args.sparsity:g}: {len(flat)} matrices in {len(blocks)} blocks, "
          f"ratios {flat[low]:.4f} ({where[0]}) to {flat[high]:.4f} ({where[1]}), parameter-weighted mean "
          f"{parameter_sparsity(ratios, blocks):.6f}; from the {info['from']}, {time.perf_counter() - start:.1f} s")
    print(f"written to {out}/ ({', '.join(p.name for p in paths)})")


def _check_export(args) -> tuple[dict | None, str]:
    """(the function or None, the allocation's label), everything checked before any model loads."""
    check_exportable(args.pruner)
    _check_constants(args)
    if args.granularity == "matrix" and args.function is None and args.allocation not in allocation.MATRIX_METHODS:
        raise UserError(f"--granularity matrix exports a function or {', '.join(allocation.MATRIX_METHODS)} "
                        "(--allocation); the other baselines give one ratio per block")
    if args.allocation == "atp" and args.atp_step is None:
        raise UserError("export --allocation atp needs --atp-step (ATP's step is chosen by pruning: "
                        "apply.py run --allocation atp prints the one it chose)")
    if args.function is None:
        return None, args.allocation
    (label, function), = _labelled_functions([args.function]).items()
    if is_matrix_function(function) and args.granularity != "matrix":
        raise UserError(f"{label} sets one ratio per matrix: export it with --granularity matrix")
    return function, label


def _recipe_name() -> str:
    try:
        import yaml  # noqa: F401
    except ImportError:
        return "recipe.json"
    return "recipe.yaml"


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
        model = _model_for(args, [function])
        ratios, values, labels = _flat_ratios(function, model, args.sparsity)
        unit = "block role" if is_matrix_function(function) else "block"
        print(f"\n{args.model} at {args.sparsity:g}:\n{unit}  importance  ratio")
        for label, value, ratio in zip(labels, values, ratios):
            print(f"{label}  {value:10.4g}  {ratio:.4f}")
        moved, _, _ = _flat_ratios(function, model, args.sparsity, moved=True)  # the same function, every guard moved
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
    model = _model_for(args, [first, second])
    if is_matrix_function(first) != is_matrix_function(second):
        print(f"same ratios on {args.model}: no (one sets a ratio per matrix, the other per block)")
        return False
    ratios_a, _, labels = _flat_ratios(first, model, args.sparsity)
    ratios_b, _, _ = _flat_ratios(second, model, args.sparsity)
    gaps = [abs(x - y) for x, y in zip(ratios_a, ratios_b)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    same_ratios = gaps[worst] <= args.tolerance
    print(f"same ratios on {args.model} at {args.sparsity:g}: {'yes' if same_ratios else 'no'} "
          f"(largest difference {gaps[worst]:.3g} at block {' '.join(labels[worst].split())}, tolerance {args.tolerance:g})")
    return same and same_ratios


def build_parser(show_all: bool = False) -> argparse.ArgumentParser:
    """Every command's parser; the rarely changed options are listed only with `show_all` (--help-all)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    hide = _hider(show_all)
    for add in (_run_parser, _compare_parser, _export_parser, _show_parser, _diff_parser, _list_parser):
        _help_all(add(sub, hide))
    return parser


def _help_all(parser) -> None:
    parser.add_argument("--help-all", action="help", help="show every option, the rarely changed ones too, and exit")


def _run_parser(sub, hide):
    prune = sub.add_parser("run", help="prune with one allocation and evaluate (the default command)")
    _model_options(prune, hide)
    _pruner_options(prune, hide)
    _constant_options(prune, hide)
    _choosing_options(prune, hide)
    chosen = prune.add_mutually_exclusive_group()
    chosen.add_argument("--allocation", choices=METHODS, default="uniform", help="allocation method (default: %(default)s)")
    chosen.add_argument("--function", default=None, metavar="NAME|FILE",
                        help="a discovered function: a library name (apply.py list) or a file (results/<run>/best.json)")
    prune.add_argument("--sparsity", type=_sparsity, default=DEFAULT_SPARSITY,
                       help="global sparsity in (0, 1) (default: %(default)s)")
    prune.add_argument("--json", default=None, help="write the JSON report here")
    prune.add_argument("--tune-spread", action="store_true",
                       help="with --function: choose its map constant on --atp-text with the final pruner, from ATP's "
                            "grid (one prune per value): the function's shape, this model's amplitude")
    prune.add_argument("--tune-z", type=float, default=0.0, metavar="Z",
                       help=hide("with --tune-spread: keep the file's constant unless the lowest beats it by more than Z "
                                 "standard errors of the paired per-window difference (default: 0, the lowest)"))
    prune.add_argument("--no-uniform", action="store_true", help=hide("with --function: skip the uniform comparison"))
    prune.add_argument("--save", default=None, metavar="DIR",
                       help="save the pruned model (safetensors), its tokenizer and dsa.json here")
    prune.add_argument("--save-format", choices=("dense", "bitmask"), default="dense",
                       help="with --save: dense tensors with zeros, or the pruned matrices in compressed-tensors' "
                            "sparse-bitmask layout (smaller on disk; default: %(default)s)")
    prune.add_argument("--export-llmcompressor", default=None, metavar="FILE",
                       help=hide("also write an llm-compressor recipe (YAML, or JSON for *.json); apply.py export "
                                 "writes one without pruning"))
    _zero_shot_options(prune, hide)
    _lora_options(prune, hide)
    return prune


def _zero_shot_options(prune, hide) -> None:
    prune.add_argument("--eval-zero-shot", nargs="+", default=None, metavar="TASKS",
                       help="lm-eval tasks (names or comma lists; 'standard': boolq rte hellaswag winogrande arc_easy "
                            "arc_challenge openbookqa) for zero-shot accuracy")
    prune.add_argument("--tasks-dir", action="append", default=None, metavar="DIR",
                       help=hide("a directory of local lm-eval task YAMLs (repeatable)"))
    prune.add_argument("--zero-shot-limit", type=int, default=None, metavar="N",
                       help=hide("evaluate only the first N documents of each task (quick checks)"))


def _lora_options(prune, hide) -> None:
    prune.add_argument("--finetune-lora", type=int, default=0, metavar="STEPS",
                       help="after pruning, train LoRA adapters for STEPS steps, merge them and re-apply the zeros; "
                            "an interrupted run resumes")
    prune.add_argument("--lora-text", default="c4/train", help=hide("fine-tuning text (default: %(default)s)"))
    prune.add_argument("--lora-windows", type=int, default=64, help=hide("fine-tuning windows (default: %(default)s)"))
    prune.add_argument("--lora-rank", type=int, default=8, help=hide("(default: %(default)s)"))
    prune.add_argument("--lora-lr", type=float, default=1e-4, help=hide("(default: %(default)s)"))
    prune.add_argument("--lora-batch-size", type=int, default=2, help=hide("(default: %(default)s)"))
    prune.add_argument("--lora-checkpoint", default=None, metavar="DIR",
                       help=hide("fine-tuning checkpoints (default: checkpoints/lora-MODEL-ALLOCATION-SPARSITY)"))


def _compare_parser(sub, hide):
    table = sub.add_parser("compare", help="table of allocations (and functions) x sparsities: markdown, CSV, ratio plot")
    _model_options(table, hide)
    _pruner_options(table, hide)
    _constant_options(table, hide)
    _choosing_options(table, hide)
    table.add_argument("--sparsity", type=_sparsity, nargs="+", default=[0.5, 0.6, 0.7],
                       help="global sparsities (default: %(default)s)")
    table.add_argument("--allocations", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                       help=f"baselines: {', '.join(METHODS)} (default: all)")
    table.add_argument("--function", nargs="+", default=None, metavar="NAME|FILE",
                       help="discovered functions (library names or files), measured beside the baselines")
    table.add_argument("--paired", action="store_true",
                       help="with --function: each function against each baseline, paired over the --eval windows "
                            "(mean log-ratio, standard error, windows won)")
    table.add_argument("--out", default=None, help="output directory (default: results/compare-MODEL-PRUNER)")
    return table


def _export_parser(sub, hide):
    export_ = sub.add_parser("export", help="an allocation's per-block ratios (JSON, CSV) and llm-compressor recipe, "
                                            "without pruning (a depth function: from the architecture alone)")
    chosen = export_.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--function", default=None, metavar="NAME|FILE",
                        help="a discovered function: a library name (apply.py list) or a file")
    chosen.add_argument("--allocation", choices=METHODS, default=None,
                        help=f"a baseline ({', '.join(SHAPE_METHODS)} from the architecture alone)")
    export_.add_argument("--sparsity", type=_sparsity, default=DEFAULT_SPARSITY,
                         help="global sparsity in (0, 1) (default: %(default)s)")
    export_.add_argument("--out", default=None, help="output directory (default: results/export-MODEL-ALLOCATION-SPARSITY)")
    export_.add_argument("--pruner", choices=("wanda", "sparsegpt"), default="wanda",
                         help="the recipe's llm-compressor modifier (default: %(default)s)")
    export_.add_argument("--granularity", choices=("block", "matrix"), default="block",
                         help=f"one ratio per decoder block, or per prunable matrix ({', '.join(allocation.MATRIX_METHODS)}) "
                              "(default: %(default)s)")
    _model_options(export_, hide)
    _constant_options(export_, hide)
    return export_


def _show_parser(sub, hide):
    inspect = sub.add_parser("show", help="a function's formula; with --model, its per-block values and ratios, and "
                                          "whether they move when the ops' guards move")
    inspect.add_argument("file", metavar="NAME|FILE")
    _model_options(inspect, hide)
    inspect.set_defaults(model=None)
    inspect.add_argument("--sparsity", type=_sparsity, default=DEFAULT_SPARSITY, help="(default: %(default)s)")
    return inspect


def _list_parser(sub, hide):
    return sub.add_parser("list", help="the named functions shipped with dsa (give a name to --function or show), "
                                       "with where they were found and their held-out results")


def _diff_parser(sub, hide):
    differ = sub.add_parser("diff", help="are two functions the same formula, and (with --model) the same ratios?")
    differ.add_argument("a", metavar="A")
    differ.add_argument("b", metavar="B")
    _model_options(differ, hide)
    differ.set_defaults(model=None)
    differ.add_argument("--sparsity", type=_sparsity, default=DEFAULT_SPARSITY, help="(default: %(default)s)")
    differ.add_argument("--tolerance", type=float, default=1e-6,
                        help="largest ratio difference that counts as the same (default: %(default)s)")
    return differ


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "run")  # `apply.py --model ...` means `apply.py run --model ...`
    args = build_parser(show_all="--help-all" in argv).parse_args(argv)
    if args.command == "diff":
        sys.exit(0 if diff(args) else 1)  # as diff(1): 0 the same, 1 different, 2 an error
    {"run": run, "compare": compare, "export": export, "show": show, "list": list_functions}[args.command](args)


if __name__ == "__main__":
    main()

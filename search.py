"""Search for a layer-wise sparsity allocation function (DSA) by genetic programming.

  python search.py                           # smollm2-135m, Wanda, 70 %, ~14 min on 2 CPU cores with its report
  python search.py --resume checkpoints/NAME  # continue a killed run from its last generation
  python search.py --address auto --workers 8 # on a running Ray cluster (ray start --head ...)
  python search.py --models smollm2-135m gemma3-270m --holdout qwen2.5-0.5b  # functions that transfer

Fitness is perplexity on validation windows (pruned with the search's cached Wanda form). The
report (results/<name>/) prunes the best allocation and the baselines (uniform, OWL, AlphaPruning,
DSA's published function, DLP, ATP) with the final pruner (sequential Wanda by default) and
measures them on the test texts, on every training model and on the --holdout models, which the
search never reads. ATP's lambda is chosen as `apply.py compare` chooses it: the lowest validation
perplexity with the final pruner (on the report's windows), recorded with its grid; a held-out
model takes the lambda the training models' grids agree on best.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

from dsa.functions.genome import OPERANDS
from dsa.search import checkpoint
from dsa.search.evolution import FITNESS_FORMS, SearchConfig, SearchState, check_state
from dsa.search.runner import REPORT_BASELINES, RunConfig, run
from dsa.core.paths import check_output_dir
from dsa.core.errors import UserError, exits_cleanly
from evaluators.session import OBJECTIVES
from evaluators.calibrated import ModelConfig


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1)")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):  # nan, negative and infinite refused
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also false for nan
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1]")
    return value


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _name(text: str) -> str:
    """A run name is one plain path component: it names checkpoints/<name> and results/<name>."""
    if not NAME.fullmatch(text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"bad run name {text!r}: use letters, digits, '.', '_' and '-', "
                                         "starting with a letter or digit (no '/')")
    return text


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    _models(g)
    _holdout(g)
    _data(g)
    _fitness(p.add_argument_group("fitness (selection) and report"))
    e = p.add_argument_group("evolution")
    _evolution(e)
    _search_modes(e)
    _workers(p.add_argument_group("workers (Ray)", "Candidates are evaluated by Ray actors that each hold the model; only ratio\n"
                                  "vectors and numbers travel. A dead worker is restarted and its candidates re-run."))
    _output(p.add_argument_group("output"))
    return p


def _models(g) -> None:
    b, d = ModelConfig(), SearchConfig()
    g.add_argument("--model", default=b.model, help="built-in alias, hub id, HF directory or .gguf (default: %(default)s)")
    g.add_argument("--metric", choices=("wanda", "magnitude"), default=b.metric,
                   help="element-wise pruning score used to prune and as the search's operand (default: %(default)s)")
    g.add_argument("--sparsity", type=_fraction, default=d.sparsity, help="global sparsity (default: %(default)s)")
    g.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="search on several models at once: every candidate function is scored on each (its own "
                        "features, ratios and validation windows) by the mean of log(ppl / ppl of uniform)")
    g.add_argument("--sparsities", nargs="+", type=_fraction, default=None, metavar="S",
                   help="average the score over these sparsities the same way (default: --sparsity alone)")


def _holdout(g) -> None:
    r = RunConfig()
    g.add_argument("--holdout", nargs="+", default=[], metavar="MODEL",
                   help="models the search never sees: the best function and the baselines are replayed on "
                        "them after the search, with the final pruner (transfer table in the report)")
    g.add_argument("--holdout-tune", nargs="+", default=None, metavar="TEXT",
                   help="on each held-out model, also replay the best function with its map constant, and ATP "
                        "with its lambda, chosen on these texts of that model with the final pruner (one prune per "
                        "grid value: 6 + 6; several texts: the lowest geometric mean of their perplexities); "
                        "calib-next, the calibration text's windows after the calibration ones, and ptb/train read "
                        "no validation or test text to choose (may be given with --resume) (default: off)")
    g.add_argument("--holdout-tune-windows", type=_positive, default=None, metavar="N",
                   help=f"windows of each --holdout-tune text each grid value is measured on (may be given with "
                        f"--resume) (default: {r.holdout_tune_windows})")
    g.add_argument("--holdout-tune-z", type=_non_negative, default=None, metavar="Z",
                   help="keep the training models' constant (the function's own; ATP's training lambda) unless the "
                        "grid's lowest beats it by more than Z standard errors of the paired per-window difference "
                        "on the --holdout-tune texts; with 2 the choice was the test text's best on 8 of 10 grids measured "
                        f"(written after the one miss it fixes) (may be given with --resume) (default: {r.holdout_tune_z:g}: the "
                        "lowest)")


def _data(g) -> None:
    b = ModelConfig()
    g.add_argument("--calib", default=b.calib_text, help="calibration text (default: %(default)s)")
    g.add_argument("--calib-windows", type=_positive, default=b.calib_windows, help="(default: %(default)s)")
    g.add_argument("--seqlen", type=_positive, default=b.seqlen, help="tokens per window (default: %(default)s)")
    g.add_argument("--batch-size", type=_positive, default=b.batch_size, help="windows per forward (default: %(default)s)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16/fp16 on GPU, fp32 on CPU)")


def _fitness(f) -> None:
    d, r = SearchConfig(), RunConfig()
    f.add_argument("--fitness-text", default=r.fitness_text, help="validation text for selection (default: %(default)s)")
    f.add_argument("--fitness-windows", type=_positive, default=d.fitness_windows,
                   help="validation windows of a full evaluation (default: %(default)s)")
    f.add_argument("--screen-windows", type=_positive, default=d.screen_windows,
                   help="windows every offspring is screened on first (default: %(default)s)")
    f.add_argument("--fitness-form", choices=FITNESS_FORMS, default=d.fitness_form,
                   help="how a full evaluation (the initial population, the promoted offspring) prunes: "
                        "cached (the search's incremental Wanda, seconds) or sequential (the final pruner, "
                        "sequential Wanda: one calibration pass per candidate); screening is always cached "
                        "(default: %(default)s)")
    f.add_argument("--objective", choices=OBJECTIVES, default=r.objective,
                   help="ppl, or kl: KL divergence to the dense model's predictions (default: %(default)s)")
    _report(f)


def _report(f) -> None:
    r = RunConfig()
    f.add_argument("--report-texts", nargs="+", default=list(r.report_texts), help="test texts (default: %(default)s)")
    f.add_argument("--report-windows", type=_positive, default=r.report_windows, help="(default: %(default)s)")
    f.add_argument("--final-pruner", choices=("wanda", "sparsegpt", "alps"), default=r.final_pruner,
                   help="the report's truth: the best and the baselines pruned with this (sequential) pruner "
                        "beside the search's cached form (default: %(default)s)")
    f.add_argument("--report-baselines", nargs="+", default=list(r.report_baselines), choices=REPORT_BASELINES,
                   metavar="NAME", help="baselines pruned beside the best in the report (default: %(default)s)")
    f.add_argument("--rank-check", type=_count, default=r.rank_check,
                   help="distinct allocations of the final population re-measured with the final pruner on "
                        "validation, for the rank agreement of the two forms (0: skip) (default: %(default)s)")
    f.add_argument("--final-select", type=_count, default=None, metavar="K",
                   help="prune the final population's K best distinct allocations again with the final pruner on "
                        "the training models' validation text and report the best of them, where the search's "
                        "cached form ties candidates; costs K final-pruner runs per training model, one more for uniform "
                        "with several models (0: report the search's own best; with --resume it may be changed) (default: %d)" % r.final_select)


def _evolution(e) -> None:
    d = SearchConfig()
    e.add_argument("--generations", type=_positive, default=None,
                   help=f"(default: {d.generations}; with --resume: extend the run to this many)")
    e.add_argument("--population", type=_positive, default=d.population, help="parents kept (mu) (default: %(default)s)")
    e.add_argument("--offspring", type=_positive, default=d.offspring, help="offspring per generation (lambda) (default: %(default)s)")
    e.add_argument("--promote", type=_positive, default=d.promote,
                   help="offspring per generation completed on all fitness windows (default: %(default)s)")
    e.add_argument("--tournament", type=_positive, default=d.tournament, help="tournament size (default: %(default)s)")
    e.add_argument("--cxpb", type=_probability, default=d.cxpb, help="crossover probability (default: %(default)s)")
    e.add_argument("--mutpb", type=_probability, default=d.mutpb, help="mutation probability (default: %(default)s)")
    e.add_argument("--seed", type=int, default=d.seed, help="random seed; same seed, same result (default: %(default)s)")
    e.add_argument("--arithmetic", action="store_true", help="allow reductions joined by + - * / (beyond DSA)")
    e.add_argument("--random-search", action="store_true", help="random functions instead of evolution, same budget")


def _search_modes(e) -> None:
    d = SearchConfig()
    e.add_argument("--operands", nargs="+", choices=OPERANDS, default=None, metavar="NAME",
                   help=f"the operands functions may read, of {', '.join(OPERANDS)} (default: all); "
                        "`--operands depth` searches functions of block depth alone, whose ratios follow the "
                        "model's shape and no score statistic; seeds reading other operands are left out")
    e.add_argument("--guard-check", action="store_true",
                   help="reject (as invalid) functions whose ratios move by more than 0.001 on a block when the ops' "
                        "numerical guards move (log floors, DSA's log epsilon and zero fill, the exp clamp, division "
                        "by ~0, the nan/inf fills) and depth's ends move inward by 1e-4: such a function reads a guard, e.g. protects block 0 because "
                        "log(depth) hits the floor there, a fact about one block rather than a rule; with `--operands depth` "
                        "the leave-one-out searches that transferred to every held-out model used it (default: off)")
    e.add_argument("--per-block", action="store_true",
                   help="evolve the per-block ratio vector itself (EvoPress-style (1+lambda) level switches) "
                        "instead of a function: a per-model reference at the same evaluation budget")
    e.add_argument("--level-step", type=_fraction, default=d.level_step,
                   help="per-block: ratio change of one level switch (default: %(default)s)")
    e.add_argument("--max-switches", type=_positive, default=d.max_switches,
                   help="per-block: at most this many level switches per child (default: %(default)s)")


def _workers(w) -> None:
    w.add_argument("--workers", type=_count, default=None, metavar="N",
                   help="evaluation workers: N actors, or 0 to evaluate in this process without Ray "
                        "(default: one per GPU, else one actor using all CPU cores)")
    w.add_argument("--address", default=None, metavar="ADDR",
                   help="join a running Ray cluster: 'auto' (this machine's `ray start` cluster) or HOST:PORT of "
                        "its head; default: start an embedded local Ray for this run")


def _output(o) -> None:
    r = RunConfig()
    o.add_argument("--name", type=_name, default=None, help="run name (default: a timestamp)")
    o.add_argument("--results-dir", default=r.results_dir, help="(default: %(default)s)")
    o.add_argument("--checkpoint-dir", default=r.checkpoint_dir, help="(default: %(default)s)")
    o.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run checkpointed in DIR (its saved settings apply; --generations may extend it)")


def config_from_args(args) -> RunConfig:
    if args.screen_windows > args.fitness_windows:
        raise UserError("--screen-windows cannot exceed --fitness-windows")
    if args.models and args.per_block:
        raise UserError("--per-block evolves one model's ratios; it takes --model, not --models")
    if args.holdout and args.per_block:
        raise UserError("--holdout replays a function; a per-block search has none")
    models = tuple(dict.fromkeys(args.models or [args.model]))
    if set(models) & set(args.holdout):
        raise UserError(f"{sorted(set(models) & set(args.holdout))[0]} is both a training and a held-out model")
    model_config = ModelConfig(model=models[0], metric=args.metric, calib_text=args.calib, calib_windows=args.calib_windows,
                        seqlen=args.seqlen, batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    search = SearchConfig(sparsity=args.sparsity, population=args.population, offspring=args.offspring,
                          promote=args.promote, generations=args.generations or SearchConfig.generations,
                          tournament=args.tournament,
                          cxpb=args.cxpb, mutpb=args.mutpb, seed=args.seed, arithmetic=args.arithmetic,
                          random_search=args.random_search, fitness_windows=args.fitness_windows,
                          screen_windows=args.screen_windows, mode="per-block" if args.per_block else "function",
                          level_step=args.level_step, max_switches=args.max_switches,
                          fitness_form=args.fitness_form, operands=tuple(args.operands or ()),
                          guard_check=args.guard_check,
                          sparsities=tuple(dict.fromkeys(args.sparsities or [])))
    if args.per_block and args.operands:
        raise UserError("--operands restricts a function search; a per-block search reads none")
    if args.per_block and args.guard_check:
        raise UserError("--guard-check tests functions; a per-block search evolves ratios, not functions")
    if args.per_block and args.random_search:
        raise UserError("--per-block and --random-search are two different searches; choose one")
    suffix = "-random" if args.random_search else "-perblock" if args.per_block else ""
    name = args.name or time.strftime("%Y%m%d-%H%M%S") + suffix
    return RunConfig(fitness_text=args.fitness_text, objective=args.objective, report_texts=tuple(args.report_texts),
                     report_windows=args.report_windows, name=name, results_dir=args.results_dir,
                     checkpoint_dir=args.checkpoint_dir, model_config=model_config, search=search,
                     models=models if len(models) > 1 else (), holdout=tuple(dict.fromkeys(args.holdout)),
                     final_pruner=args.final_pruner, rank_check=args.rank_check,
                     final_select=RunConfig.final_select if args.final_select is None else args.final_select,
                     report_baselines=tuple(dict.fromkeys(args.report_baselines)), holdout_tune=tuple(dict.fromkeys(args.holdout_tune or ())),
                     holdout_tune_windows=args.holdout_tune_windows or RunConfig.holdout_tune_windows,
                     holdout_tune_z=args.holdout_tune_z or RunConfig.holdout_tune_z)


def resume_from(directory: str, generations: int | None) -> tuple[RunConfig, SearchState]:
    try:
        document = checkpoint.load(directory)
        if isinstance(document, dict):
            document["run"] = RunConfig.upgrade(document.get("run"))
        checkpoint.check_document(document, run=RunConfig(), state=SearchState())
        config = RunConfig.from_dict(document["run"])
        state = SearchState(**document["state"])
        check_state(state, config.search)
    except FileNotFoundError as err:
        raise UserError(str(err))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{directory} does not hold a valid checkpoint ({err.__class__.__name__}: {err})")
    if generations is not None and generations != config.search.generations:
        config = RunConfig.from_dict({**config.as_dict(), "search": {**config.as_dict()["search"], "generations": generations}})
    # The checkpoint's own folder is where it continues, wherever it was moved to.
    path = Path(directory).resolve()
    config = RunConfig.from_dict({**config.as_dict(), "name": path.name, "checkpoint_dir": str(path.parent)})
    return config, state


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        if not args.resume.strip():
            raise UserError("--resume needs the checkpoint directory of a run (it was empty)")
        config, state = resume_from(args.resume, args.generations)
        if args.final_select is not None:  # how the report chooses, not what the search did
            config = dataclasses.replace(config, final_select=args.final_select)
        if args.holdout_tune is not None:  # how the report replays, not what the search did
            config = dataclasses.replace(config, holdout_tune=tuple(dict.fromkeys(args.holdout_tune)))
        if args.holdout_tune_windows is not None:
            config = dataclasses.replace(config, holdout_tune_windows=args.holdout_tune_windows)
        if args.holdout_tune_z is not None:
            config = dataclasses.replace(config, holdout_tune_z=args.holdout_tune_z)
        print(f"resuming {config.name} at generation {state.generation} of {config.search.generations}")
    else:
        config, state = config_from_args(args), None
        checkpoint.check_new_run(config.name, config.checkpoint_dir, config.results_dir)
    if config.final_select == 1:
        raise UserError("--final-select compares K >= 2 allocations (0: report the search's own best)")
    if config.final_select and config.search.mode == "per-block":
        raise UserError("--final-select chooses among functions; a per-block search has none")
    if config.holdout_tune and not config.holdout:
        raise UserError("--holdout-tune chooses amplitudes on held-out models: give them with --holdout")
    if config.holdout_tune_z and not config.holdout_tune:
        raise UserError("--holdout-tune-z tests the amplitude --holdout-tune chooses: give its texts too")
    if config.holdout_tune_z and config.holdout_tune_windows < 2:
        raise UserError("--holdout-tune-z compares windows: --holdout-tune-windows must be >= 2")
    for text in [t for t in config.holdout_tune if t in config.report_texts]:
        raise UserError(f"--holdout-tune {text} is a report text: choosing on it would read the test text")
    if args.workers == 0 and args.address:
        raise UserError("--address needs Ray workers; drop --workers 0")
    check_output_dir(config.results_dir, "--results-dir")
    check_output_dir(config.checkpoint_dir, "--checkpoint-dir")
    report = run(config, state, workers=args.workers, address=args.address)
    out = Path(config.results_dir) / config.name
    print(f"\nresults in {out}/ (report.md, report.json, ratios.csv, plots; best.json for a function)")
    print((out / "formula.txt").read_text().splitlines()[0])
    for row in report["transfer"]:
        kind = "trained" if row["trained"] else "held-out"
        cells = "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("target", "trained"))
        print(f"{row['target']} ({kind}), {config.report_texts[0]} with {config.final_pruner}: {cells}")
    print(json.dumps({k: report[k] for k in ("evaluations", "cache_hits", "feature_cache_hits", "wall_s", "workers")}))

if __name__ == "__main__":
    main()

"""Search for a layer-wise sparsity allocation function (DSA) by genetic programming.

  python search.py                                 # the quick preset: smollm2-135m, 70 %, ~20 min on 2 CPU cores
  python search.py --preset transfer               # the checked protocol: functions that carry to unseen models
  python search.py --resume checkpoints/NAME       # continue a killed run from its last generation
  python search.py report NAME --holdout gemma3-270m  # the report again, with other report-time choices
  python search.py --address auto --workers 8      # on a running Ray cluster (ray start --head ...)

Settings are layered: defaults < --preset < --config FILE < flags < --set KEY=VALUE (e.g.
--set search.fitness_windows=8); --help-all lists every flag. Fitness is perplexity on validation
windows; the report (results/<name>/) prunes the best allocation and the baselines with the final
pruner (sequential Wanda) and measures them on test text, on the training models and on the
--holdout models, which the search never reads. It says which kind of function was found and how
to replay it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from dsa.core.errors import UserError, exits_cleanly
from dsa.core.paths import check_output_dir
from dsa.functions.genome import GRANULARITIES, MATRIX_OPERANDS
from dsa.search import checkpoint, presets, settings
from dsa.search.settings import FINAL_PRUNERS
from dsa.search.evolution import FITNESS_FORMS, SearchConfig, SearchState, check_state
from dsa.search.runner import REPORT_BASELINES, RunConfig, run
from evaluators.calibrated import ModelConfig
from evaluators.session import OBJECTIVES

MODES = ("function", "per-block", "random")
# What a user sets on a normal run; every other flag is listed by --help-all only.
EVERYDAY = {"--preset", "--config", "--set", "--mode", "--model", "--models", "--holdout", "--sparsity",
            "--generations", "--population", "--seed", "--workers", "--address", "--device", "--name",
            "--resume", "--help-all"}
# Flags whose setting lives elsewhere in the RunConfig tree than search.<dest>, model_config.<dest> or <dest>.
RENAMED = {"calib": "model_config.calib_text"}
NOT_SETTINGS = {"preset", "config", "set", "mode", "workers", "address", "resume", "help_all", "command", "run_name"}


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


class _Parser(argparse.ArgumentParser):
    """Hides the help of flags outside EVERYDAY unless built for --help-all."""

    def __init__(self, *args, show_all: bool = False, **kwargs):
        super().__init__(*args, argument_default=argparse.SUPPRESS, **kwargs)
        self.show_all = show_all

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument

        def add_argument(*flags, **options):
            if not self.show_all and not EVERYDAY.intersection(flags):
                options["help"] = argparse.SUPPRESS
            return add(*flags, **options)

        group.add_argument = add_argument
        return group


def build_parser(show_all: bool = False) -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, show_all=show_all)
    _settings(p.add_argument_group("settings"))
    _models(p.add_argument_group("models"))
    _data(p.add_argument_group("data"))
    _fitness(p.add_argument_group("fitness (selection) and report"))
    _evolution(p.add_argument_group("evolution"))
    _workers(p.add_argument_group("workers (Ray)", "Ray actors each hold a model; only ratio vectors and numbers "
                                  "travel. A dead worker is restarted and its candidates re-run."))
    _output(p.add_argument_group("output"))
    return p


def _settings(g) -> None:
    g.add_argument("--help-all", action="store_true", help="show every flag, not only the everyday ones")
    g.add_argument("--preset", choices=presets.names(),
                   help=f"where the settings start (default: {presets.DEFAULT_PRESET}); the files are in dsa/search/presets/")
    g.add_argument("--config", metavar="FILE", help="a JSON file of settings laid over the preset")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any setting, last word: e.g. --set search.fitness_windows=8 (repeatable)")
    g.add_argument("--mode", choices=MODES,
                   help="function: evolve functions; random: random functions, same budget; per-block: evolve one "
                        "model's ratios (default: function)")


def _models(g) -> None:
    b, d = ModelConfig(), SearchConfig()
    g.add_argument("--model", help=f"built-in alias, hub id, HF directory or .gguf (default: {b.model})")
    g.add_argument("--models", nargs="+", metavar="MODEL",
                   help="search on several models at once, scored by the mean of log(ppl / ppl of uniform)")
    g.add_argument("--holdout", nargs="*", metavar="MODEL",
                   help="models the search never sees: the best function and the baselines are replayed on them "
                        "(none given: no held-out model, e.g. to train a preset on all its models)")
    g.add_argument("--sparsity", type=_fraction, help=f"global sparsity (default: {d.sparsity})")
    g.add_argument("--sparsities", nargs="+", type=_fraction, metavar="S",
                   help="average the score over these sparsities as over models (default: --sparsity alone)")
    g.add_argument("--metric", choices=("wanda", "magnitude"), help=f"element-wise score (default: {b.metric})")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if present)")
    g.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16/fp16 on GPU, fp32 on CPU)")


def _data(g) -> None:
    b = ModelConfig()
    g.add_argument("--calib", help=f"calibration text (default: {b.calib_text})")
    g.add_argument("--calib-windows", type=_positive, help=f"(default: {b.calib_windows})")
    g.add_argument("--seqlen", type=_positive, help=f"tokens per window (default: {b.seqlen})")
    g.add_argument("--batch-size", type=_positive, help=f"windows per forward (default: {b.batch_size})")


def _fitness(f) -> None:
    d, r = SearchConfig(), RunConfig()
    f.add_argument("--fitness-text", help=f"validation text for selection (default: {r.fitness_text})")
    f.add_argument("--fitness-windows", type=_positive, help=f"windows of a full evaluation (default: {d.fitness_windows})")
    f.add_argument("--screen-windows", type=_positive, help=f"windows each offspring is screened on (default: {d.screen_windows})")
    f.add_argument("--fitness-form", choices=FITNESS_FORMS,
                   help=f"cached (incremental Wanda) or sequential (the final pruner) (default: {d.fitness_form})")
    f.add_argument("--objective", choices=OBJECTIVES, help=f"ppl, or kl to the dense model (default: {r.objective})")
    _report_flags(f, r)


def _report_flags(f, r: RunConfig) -> None:
    f.add_argument("--report-texts", nargs="+", help=f"test texts (default: {' '.join(r.report_texts)})")
    f.add_argument("--report-windows", type=_positive, help=f"(default: {r.report_windows})")
    f.add_argument("--final-pruner", choices=FINAL_PRUNERS, help=f"the report's pruner (default: {r.final_pruner})")
    f.add_argument("--report-baselines", nargs="+", choices=REPORT_BASELINES, metavar="NAME",
                   help=f"baselines beside the best (default: {' '.join(r.report_baselines)})")
    f.add_argument("--rank-check", type=_count,
                   help=f"final-population allocations re-measured with the final pruner (default: {r.rank_check})")
    f.add_argument("--final-select", type=_count, metavar="K",
                   help="report the best of the K best distinct allocations under the final pruner (default: 0, off)")
    f.add_argument("--holdout-tune", nargs="+", metavar="TEXT",
                   help="texts of each held-out model its map constant and ATP's lambda are chosen on (default: off)")
    f.add_argument("--holdout-tune-windows", type=_positive, metavar="N",
                   help=f"windows of each --holdout-tune text (default: {r.holdout_tune_windows})")
    f.add_argument("--holdout-tune-z", type=_non_negative, metavar="Z",
                   help="keep the training constant unless beaten by Z standard errors (default: 0, the lowest)")


def _evolution(e) -> None:
    d = SearchConfig()
    e.add_argument("--generations", type=_positive, help=f"(default: {d.generations}; with --resume: extend to this many)")
    e.add_argument("--population", type=_positive, help=f"parents kept (mu) (default: {d.population})")
    e.add_argument("--offspring", type=_positive, help=f"offspring per generation (lambda) (default: {d.offspring})")
    e.add_argument("--promote", type=_positive, help=f"offspring completed on all windows (default: {d.promote})")
    e.add_argument("--tournament", type=_positive, help=f"tournament size (default: {d.tournament})")
    e.add_argument("--cxpb", type=_probability, help=f"crossover probability (default: {d.cxpb})")
    e.add_argument("--mutpb", type=_probability, help=f"mutation probability (default: {d.mutpb})")
    e.add_argument("--seed", type=int, help=f"random seed; same seed, same result (default: {d.seed})")
    e.add_argument("--arithmetic", action="store_true", help="allow reductions joined by + - * / (beyond DSA)")
    e.add_argument("--granularity", choices=GRANULARITIES,
                   help="block: one ratio per decoder block; matrix: one per prunable matrix (the pipeline per "
                        "matrix, plus one ratio offset per role q k v o gate up down) (default: block)")
    e.add_argument("--operands", nargs="+", choices=MATRIX_OPERANDS, metavar="NAME",
                   help=f"operands functions may read, of {', '.join(MATRIX_OPERANDS)} (share: per matrix only; "
                        "default: all)")
    e.add_argument("--seed-functions", nargs="+", metavar="NAME|FILE",
                   help="library functions (apply.py list) or function files the first generation starts from, "
                        "beside the baselines")
    e.add_argument("--guard-check", action="store_true",
                   help="reject functions whose ratios move when the ops' numerical guards move")
    e.add_argument("--level-step", type=_fraction, help=f"per-block: ratio step of one level (default: {d.level_step})")
    e.add_argument("--max-switches", type=_positive, help=f"per-block: switches per child (default: {d.max_switches})")


def _workers(w) -> None:
    w.add_argument("--workers", type=_count, metavar="N",
                   help="N actors, or 0: in this process without Ray (default: one per GPU, else one on all cores)")
    w.add_argument("--address", metavar="ADDR", help="join a running Ray cluster: 'auto' or HOST:PORT (default: start one)")


def _output(o) -> None:
    r = RunConfig()
    o.add_argument("--name", type=_name, help="run name (default: a timestamp)")
    o.add_argument("--results-dir", help=f"(default: {r.results_dir})")
    o.add_argument("--checkpoint-dir", help=f"(default: {r.checkpoint_dir})")
    o.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR (--generations may extend it)")


def _place(dest: str) -> list[str]:
    """A flag's place in the RunConfig tree."""
    if dest in RENAMED:
        return RENAMED[dest].split(".")
    for part, template in (("search", SearchConfig), ("model_config", ModelConfig)):
        if dest in {f.name for f in dataclasses.fields(template)}:
            return [part, dest]
    return [dest]


def settings_tree(args) -> dict:
    """RunConfig's tree with the layers laid over it: preset, --config, flags, --set."""
    template = RunConfig()
    tree = settings.default_tree(getattr(args, "preset", presets.DEFAULT_PRESET))
    if getattr(args, "config", None):
        tree = settings.merge(tree, settings.load_config_file(args.config), template, f"--config {args.config}")
    for dest, value in vars(args).items():
        if dest not in NOT_SETTINGS:
            tree = settings.set_path(tree, _place(dest), value, template, f"--{dest.replace('_', '-')}")
    if "model" in vars(args) and "models" not in vars(args):
        tree["models"] = []  # --model replaces a preset's training models
    if getattr(args, "holdout", None) == []:
        tree |= {"holdout_tune": [], "holdout_tune_z": 0.0}  # tuning on held-out models: none left to tune
    mode = getattr(args, "mode", None)
    if mode:
        tree["search"] |= {"mode": "per-block" if mode == "per-block" else "function", "random_search": mode == "random"}
    for item in getattr(args, "set", None) or []:
        path, value = settings.parse_set(item)
        tree = settings.set_path(tree, path, value, template, f"--set {item}")
    return tree


def config_from_args(args) -> RunConfig:
    return settings.run_config(settings_tree(args), getattr(args, "name", None))

def resume_from(directory, generations: int | None) -> tuple[RunConfig, SearchState]:
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
        config = dataclasses.replace(config, search=dataclasses.replace(config.search, generations=generations))
    # The checkpoint's own folder is where it continues, wherever it was moved to.
    path = Path(directory).resolve()
    return dataclasses.replace(config, name=path.name, checkpoint_dir=str(path.parent)), state


RESUME_FLAGS = {"resume", "generations", "workers", "address"}


def _resume(args) -> tuple[RunConfig, SearchState]:
    if not args.resume.strip():
        raise UserError("--resume needs the checkpoint directory of a run (it was empty)")
    for dest in sorted(set(vars(args)) - RESUME_FLAGS - {"help_all"}):
        raise UserError(f"--resume continues with the run's saved settings: drop --{dest.replace('_', '-')} "
                        "(report-time choices: python search.py report NAME ...)")
    config, state = resume_from(args.resume, getattr(args, "generations", None))
    print(f"resuming {config.name} at generation {state.generation} of {config.search.generations}")
    return config, state


def build_report_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="search.py report", show_all=True,
                description="Write a finished search's report again (results/RUN/), with other report-time "
                            "choices: held-out models, final select, amplitude tuning, rank check, baselines.")
    p.add_argument("run", metavar="RUN", help="the run's name (checkpoints/RUN) or its checkpoint folder")
    g = p.add_argument_group("report")
    g.add_argument("--holdout", nargs="+", metavar="MODEL", help="models to replay the function on (default: the run's)")
    _report_flags(g, RunConfig())
    _workers(g)
    g.add_argument("--checkpoint-dir", help=f"where RUN is looked up (default: {RunConfig.checkpoint_dir})")
    return p


REPORT_CHOICES = {"holdout", "report_texts", "report_windows", "final_pruner", "report_baselines", "rank_check",
                  "final_select", "holdout_tune", "holdout_tune_windows", "holdout_tune_z"}


def report_config(args) -> tuple[RunConfig, SearchState]:
    directory = Path(args.run)
    if not (directory / "state.json").exists():
        directory = Path(getattr(args, "checkpoint_dir", RunConfig.checkpoint_dir)) / args.run
    config, state = resume_from(directory, None)
    if state.generation < config.search.generations:
        raise UserError(f"{config.name} stopped at generation {state.generation} of {config.search.generations}: "
                        f"finish it first (python search.py --resume {directory})")
    choices = {k: (tuple(dict.fromkeys(v)) if isinstance(v, list) else v) for k, v in vars(args).items()
               if k in REPORT_CHOICES}
    config = dataclasses.replace(config, **choices)
    if set(config.model_names()) & set(config.holdout):
        raise UserError(f"{sorted(set(config.model_names()) & set(config.holdout))[0]} is a training model, not held out")
    settings.check_report_settings(config)
    return config, state


def print_summary(config: RunConfig, report: dict) -> None:
    out = Path(config.results_dir) / config.name
    print(f"\nresults in {out}/ (report.md, report.json, ratios.csv, plots; best.json for a function)")
    print("found: " + (out / "formula.txt").read_text().splitlines()[0])
    print("kind: " + report["kind"])
    for row in report["transfer"]:
        kind = "trained" if row["trained"] else "held-out"
        cells = "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("target", "trained"))
        print(f"{row['target']} ({kind}), {config.report_texts[0]} with {config.final_pruner}: {cells}")
    if report["replay"]:
        print("replay: " + report["replay"])
    print(json.dumps({k: report[k] for k in ("evaluations", "cache_hits", "feature_cache_hits", "wall_s", "workers")}))


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        args = build_report_parser().parse_args(argv[1:])
        config, state = report_config(args)
    else:
        if "--help-all" in argv:
            build_parser(show_all=True).print_help()
            return
        args = build_parser().parse_args(argv)
        if "resume" in vars(args):
            config, state = _resume(args)
        else:
            config, state = config_from_args(args), None
            checkpoint.check_new_run(config.name, config.checkpoint_dir, config.results_dir)
    workers, address = getattr(args, "workers", None), getattr(args, "address", None)
    if workers == 0 and address:
        raise UserError("--address needs Ray workers; drop --workers 0")
    check_output_dir(config.results_dir, "--results-dir")
    check_output_dir(config.checkpoint_dir, "--checkpoint-dir")
    report = run(config, state, workers=workers, address=address)
    print_summary(config, report)


if __name__ == "__main__":
    main()

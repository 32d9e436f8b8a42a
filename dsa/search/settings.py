"""A run's settings, layered: RunConfig's defaults < a preset < a config file < command-line flags
< KEY=VALUE settings; every key checked against the RunConfig tree, every value by type and range,
and the settings checked against each other, before any model loads."""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

from dsa.core.errors import UserError
from dsa.core.paths import check_input_file
from dsa.functions.genome import GRANULARITIES, operands_for
from dsa.functions.replay import seed_names
from evaluators.session import OBJECTIVES

from . import checkpoint, presets
from .evolution import FITNESS_FORMS
from .runner import REPORT_BASELINES, RunConfig

FINAL_PRUNERS = ("wanda", "sparsegpt", "alps")


def default_tree(preset: str = presets.DEFAULT_PRESET) -> dict:
    """RunConfig's defaults (as JSON types) with the preset laid over them."""
    template = RunConfig()
    return merge(json.loads(json.dumps(template.as_dict())), presets.load_preset(preset), template, f"preset {preset}")


def load_config_file(path: str) -> dict:
    raw = check_input_file(Path(path), "--config").read_text()
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path} is not JSON ({err})")
    if not isinstance(document, dict):
        raise UserError(f"--config {path} must hold one JSON object of settings")
    return document


def parse_set(item: str) -> tuple[list[str], object]:
    """`search.population=8` -> (["search", "population"], 8); the value is JSON, else a string."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. search.population=8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key.strip().split("."), value


def merge(tree: dict, layer: dict, template, where: str) -> dict:
    """`layer` laid over `tree` (a copy), every key checked against the dataclass `template`."""
    tree = copy.deepcopy(tree)
    fields = {f.name for f in dataclasses.fields(template)}
    for key, value in layer.items():
        if key not in fields:
            raise UserError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(fields))})")
        default = getattr(template, key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. a ModelConfig from the API
            value = json.loads(json.dumps(dataclasses.asdict(value)))
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise UserError(f"{where}: {key} holds settings, an object like {{\"...\": ...}}")
            tree[key] = merge(tree[key], value, default, f"{where} {key}")
        else:
            tree[key] = value
    return tree


def set_path(tree: dict, path: list[str], value, template, where: str) -> dict:
    """One setting at a dotted path, e.g. (["search", "population"], 8)."""
    layer = value
    for key in reversed(path):
        layer = {key: layer}
    return merge(tree, layer, template, where)


def run_config(tree: dict, name: str | None = None) -> RunConfig:
    """The RunConfig of a layered settings tree, checked: types and ranges, then the settings
    against each other. `models` wins over model_config.model; a missing name is a timestamp."""
    tree = copy.deepcopy(tree)
    try:
        checkpoint.check_document({"run": tree}, run=RunConfig())
    except ValueError as err:
        raise UserError(f"settings: {err}")
    models = list(dict.fromkeys(tree["models"] or [tree["model_config"]["model"]]))
    tree["model_config"]["model"], tree["models"] = models[0], models if len(models) > 1 else []
    search = tree["search"]
    suffix = "-random" if search["random_search"] else "-perblock" if search["mode"] == "per-block" else ""
    tree["name"] = name or time.strftime("%Y%m%d-%H%M%S") + suffix
    for key in ("holdout", "report_baselines", "holdout_tune", "report_texts"):
        tree[key] = list(dict.fromkeys(tree[key]))
    config = RunConfig.from_dict(tree)
    check_settings(config)
    return config


def check_settings(config: RunConfig) -> None:
    """What no single flag's parser can see: settings that contradict each other or name nothing."""
    search = config.search
    for name, value, known in (("model_config.metric", config.model_config.metric, ("wanda", "magnitude")),
                               ("search.fitness_form", search.fitness_form, FITNESS_FORMS),
                               ("search.mode", search.mode, ("function", "per-block")),
                               ("search.granularity", search.granularity, GRANULARITIES),
                               ("objective", config.objective, OBJECTIVES),
                               ("final_pruner", config.final_pruner, FINAL_PRUNERS)):
        if value not in known:
            raise UserError(f"{name} {value!r} is not one of {', '.join(known)}")
    for name, values, known in (("search.operands", search.operands, operands_for(search.granularity)),
                                ("report_baselines", config.report_baselines, REPORT_BASELINES)):
        for value in [v for v in values if v not in known]:
            where = f" at {search.granularity} granularity" if name == "search.operands" else ""
            raise UserError(f"{name}: {value!r} is not one of {', '.join(known)}{where}")
    if not 0 < search.sparsity < 1 or not all(0 < s < 1 for s in search.sparsities):
        raise UserError("sparsities must be in (0, 1)")
    if search.screen_windows > search.fitness_windows:
        raise UserError("--screen-windows cannot exceed --fitness-windows")
    if set(config.model_names()) & set(config.holdout):
        raise UserError(f"{sorted(set(config.model_names()) & set(config.holdout))[0]} is both a training and a held-out model")
    for spec in search.seed_functions:
        if not isinstance(spec, str):
            raise UserError(f"search.seed_functions: {spec!r} is not a library name or a function file")
        seed_names(spec, search.allowed_operands(), search.arithmetic, search.granularity)  # fails before any model loads
    if search.mode == "per-block":
        for flag, given in (("--models", config.models), ("--holdout", config.holdout), ("--operands", search.operands),
                            ("--seed-functions", search.seed_functions),
                            ("--granularity matrix", search.granularity == "matrix"),
                            ("--guard-check", search.guard_check), ("--mode random", search.random_search)):
            if given:
                raise UserError(f"--mode per-block evolves one model's ratios, not a function: drop {flag}")
    check_report_settings(config)


def check_report_settings(config: RunConfig) -> None:
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

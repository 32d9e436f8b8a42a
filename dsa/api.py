"""The Python API: allocate, prune and measure a model you hold, or run a search, from Python.

`model` is a built-in alias, hub id, Hugging Face directory or .gguf file (loaded as
evaluators.models.load_model loads it), or a model already in memory: a transformers causal LM
(any nn.Module whose decoder blocks hold nn.Linear layers), the project's LoadedModel or
CalibratedModel. A model in memory is used as it is, never copied: `prune` changes it in place,
`allocate` and `perplexity` leave its weights as they were. Every function runs the product's own
code path (baseline_ratios, function_ratios, the sequential pruners, evaluators.perplexity); bad
input raises dsa.core.errors.UserError with a one-line message.

Calibration (`calib`, `calib_windows`, `seqlen`) defaults to the product's: 16 windows of 512
tokens of c4/train (ModelConfig). A function of depth alone, uniform, ER, AlphaPruning, LAMP and
ATP at a given lambda read no text; score-based functions, OWL, DLP, global, dsa-published and
the sequential pruners read the calibration windows, and ATP without `atp_lambda` chooses it on
wiki/validation with the final pruner as apply.py does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import weakref
from collections.abc import Mapping
from typing import Sequence

import torch
from torch import nn

from dsa.allocation.allocate import METHODS, BaselineOptions, baseline_ratios
from dsa.core.constants import alpha_eps_for
from dsa.core.errors import UserError
from dsa.functions import library
from dsa.functions.files import FunctionError, to_names
from dsa.functions.replay import load_function
from dsa.allocation.matrices import check_entries, expand
from dsa.protocol.allocation import MATRIX_METHODS, matrix_ratios_on, ratios_on
from evaluators.calibrated import CalibratedModel, ModelConfig, check_text
from evaluators.calibration import input_norms
from evaluators.models import LoadedModel, find_blocks, load_model as _load_model
from evaluators.pruners import block_sizes, pruner_named, sequential_prune, zero_fraction
from evaluators.pruners.magnitude import prune_magnitude_per_matrix
from evaluators.session import EvaluationSession

DEFAULTS = ModelConfig()  # the product's calibration text, windows, window length and batch size
API_PRUNERS = ("wanda", "sparsegpt", "alps", "magnitude")  # the ones that need no dense copy
ATP_CHOOSING = ("wiki/validation", 8)
GRANULARITIES = ("block", "matrix")  # one ratio per decoder block, or one per prunable matrix  # apply.py's --atp-text and --eval-windows defaults

# Models that dsa.load_model returned: their name (part of every cache key) and tokenizer.
_KNOWN: "weakref.WeakKeyDictionary[nn.Module, tuple[str, object]]" = weakref.WeakKeyDictionary()


class HeldModel(CalibratedModel):
    """A CalibratedModel over a model already in memory, its weights not copied: the calibration
    windows and Wanda norms are read when first needed (a function of depth reads no text)."""

    def __init__(self, loaded: LoadedModel, config: ModelConfig):
        self.config, self.loaded, self.sizes = config, loaded, block_sizes(loaded)

    @functools.cached_property
    def calib(self) -> torch.Tensor:
        return self.windows(self.config.calib_text, self.config.calib_windows)

    @functools.cached_property
    def norms(self) -> dict[str, torch.Tensor]:
        return input_norms(self.loaded, self.calib, self.config.calib_text, self.config.batch_size)

    def windows(self, text: str, count: int) -> torch.Tensor:
        if self.loaded.tokenizer is None:
            self.loaded.tokenizer = _local_tokenizer(self.loaded)
        context = getattr(getattr(self.loaded.model, "config", None), "max_position_embeddings", None)
        if context and self.config.seqlen > context:
            raise UserError(f"seqlen {self.config.seqlen} is beyond the model's context of {context} tokens")
        return super().windows(text, count)


def _local_tokenizer(loaded: LoadedModel):
    """The tokenizer saved beside a model in memory (its name_or_path), or a one-line error."""
    source = getattr(loaded.model, "name_or_path", "")
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means: the caller must pass one
        raise UserError("this needs text: pass tokenizer= (the model's tokenizer)")


def load_model(name: str, device: str | None = None, dtype: str | None = None):
    """(model, tokenizer): a built-in alias, hub id, HF directory or .gguf file, loaded as the
    product loads it (CUDA in bf16 when present, else CPU float32), in eval mode."""
    loaded = _load_model(name, device, dtype)
    _KNOWN[loaded.model] = (name, loaded.tokenizer)
    return loaded.model, loaded.tokenizer


def _loaded(model, tokenizer=None) -> LoadedModel:
    """The project's view of `model` (name, blocks, tokenizer) over the same module: no copy."""
    if isinstance(model, CalibratedModel):
        model = model.loaded
    if isinstance(model, LoadedModel):
        return model if tokenizer is None else dataclasses.replace(model, tokenizer=tokenizer)
    if isinstance(model, (str, os.PathLike)):
        loaded = _load_model(str(model))
        return loaded if tokenizer is None else dataclasses.replace(loaded, tokenizer=tokenizer)
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a name, a path or a loaded model, not {type(model).__name__}")
    name, known = _KNOWN.get(model, (None, None))
    name = name or getattr(model, "name_or_path", "") or type(model).__name__
    return LoadedModel(model, tokenizer or known, name, find_blocks(model))


def _held(model, tokenizer, calib: str | None, calib_windows: int, seqlen: int) -> HeldModel:
    calib = calib or DEFAULTS.calib_text
    check_text(calib)
    loaded = _loaded(model, tokenizer)
    return HeldModel(loaded, dataclasses.replace(DEFAULTS, model=loaded.name, calib_text=calib,
                                                 calib_windows=calib_windows, seqlen=seqlen))


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """Eval mode (no dropout) while calibrating or measuring; the caller's mode after."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _function(allocation) -> dict:
    """A validated function document: a dict, a library name or a JSON file (never executed)."""
    if isinstance(allocation, dict):
        try:
            to_names(allocation)
        except (FunctionError, RecursionError) as err:
            raise UserError(f"invalid function: {err}")
        return allocation
    if not isinstance(allocation, (str, os.PathLike)):
        raise UserError(f"allocation must be a name, a path or a function, not {type(allocation).__name__}")
    if library.path_of(str(allocation)) is None and not os.path.exists(allocation):
        raise UserError(f"unknown allocation {str(allocation)!r}: a baseline ({', '.join(METHODS)}), "
                        f"a library function ({', '.join(library.names())}) or a function file")
    return load_function(allocation)


def allocate(model, allocation, sparsity: float, *, calib: str | None = None, tokenizer=None,
             calib_windows: int = DEFAULTS.calib_windows, seqlen: int = DEFAULTS.seqlen,
             pruner: str = "wanda", atp_lambda: float | None = None, granularity: str = "block") -> list:
    """One pruning ratio per decoder block whose parameter-weighted mean is `sparsity` (to 1e-9).

    `allocation`: a baseline name (uniform, owl, alphapruning, atp, ...), a library function name
    (tanh2-ramp-70, ...), a function file, or a function document (dsa.load_function's).
    `pruner`: the pruner the ratios are for (AlphaPruning's eps; ATP's choice). `atp_lambda`:
    ATP's spread (step 2 lambda / (L - 1)); without it ATP's lambda is chosen on wiki/validation.
    `granularity="matrix"`: one {linear name: ratio} per block instead (uniform, ATP's ramp, OWL
    with its outlier ratio per matrix, or a function run on each matrix; a per-matrix function,
    one with role offsets, needs it), the budget over parameters; `prune` takes either form.
    """
    if not 0.0 < sparsity < 1.0:
        raise UserError(f"sparsity {sparsity} is outside (0, 1)")
    if granularity not in GRANULARITIES:
        raise UserError(f"granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    held = _held(model, tokenizer, calib, calib_windows, seqlen)
    with _evaluating(held.loaded.model):
        if granularity == "matrix":
            return _matrix_baseline(held, allocation, sparsity, pruner, atp_lambda)
        if isinstance(allocation, str) and allocation in METHODS:
            return _baseline(held, allocation, sparsity, pruner, atp_lambda)
        return ratios_on(EvaluationSession(held), sparsity, function=_function(allocation))[0]


def _baseline(held: HeldModel, method: str, sparsity: float, pruner: str, atp_lambda: float | None) -> list[float]:
    options = BaselineOptions(alpha_eps=alpha_eps_for(pruner))
    if method == "atp":
        step = 2 * atp_lambda / max(len(held.blocks) - 1, 1) if atp_lambda is not None else _chosen_atp_step(
            held, sparsity, pruner, options)
        options = dataclasses.replace(options, atp_step=step)
    return baseline_ratios(method, held, sparsity, options)[0]


def _matrix_baseline(held: HeldModel, method, sparsity: float, pruner: str, atp_lambda: float | None) -> list[dict]:
    if not (isinstance(method, str) and method in METHODS):
        return matrix_ratios_on(EvaluationSession(held), sparsity, function=_function(method))[0]
    if method not in MATRIX_METHODS:
        raise UserError(f"at matrix granularity the allocation is a function or one of {', '.join(MATRIX_METHODS)}")
    block_form = _baseline(held, method, sparsity, pruner, atp_lambda) if method == "atp" else None
    if block_form is not None:
        return expand(block_form, held.blocks)
    return matrix_ratios_on(EvaluationSession(held), sparsity, method, BaselineOptions(alpha_eps=alpha_eps_for(pruner)))[0]


def _chosen_atp_step(held: HeldModel, sparsity: float, pruner: str, options: BaselineOptions) -> float:
    """ATP's step chosen as apply.py chooses it: each lambda of its grid pruned with `pruner` and
    measured on wiki/validation. This holds a dense copy of the prunable weights while it runs and
    puts the weights back as they were after."""
    from dsa.protocol.atp import atp_choice
    from dsa.protocol.grids import Choosing
    from dsa.protocol.session import SessionMeasurer

    session = EvaluationSession(held)
    try:
        measurer = SessionMeasurer(session, pruner, options=options)
        return atp_choice(measurer, held.config.model, sparsity, Choosing((ATP_CHOOSING[0],), ATP_CHOOSING[1]))["step"]
    finally:
        session.restore()


def prune(model, ratios: Sequence[float], pruner: str = "wanda", calib: str | None = None, tokenizer=None, *,
          calib_windows: int = DEFAULTS.calib_windows, seqlen: int = DEFAULTS.seqlen) -> float:
    """Prune `model` in place, block i at ratios[i] (a number, or {linear name: ratio} from
    allocate(..., granularity="matrix")), and return the fraction of zeros among the
    prunable weights. wanda, sparsegpt and alps prune sequentially on the calibration windows (as
    their papers: each block's inputs come from the already pruned blocks); magnitude drops each
    matrix's round(r x rows x cols) smallest weights. Pruning a pruned model prunes it further."""
    if isinstance(model, (str, os.PathLike)):
        raise UserError("prune changes a model in memory: load it first (dsa.load_model) and pass the model")
    if pruner not in API_PRUNERS:
        raise UserError(f"unknown pruner {pruner!r} here: use one of {', '.join(API_PRUNERS)}")
    rule = pruner_named(pruner)
    held = _held(model, tokenizer, calib, calib_windows, seqlen)
    if len(ratios) != len(held.blocks):
        raise UserError(f"got {len(ratios)} ratios for {len(held.blocks)} blocks")
    ratios = [dict(r) if isinstance(r, Mapping) else float(r) for r in ratios]
    check_entries(ratios, held.blocks)
    with _evaluating(held.loaded.model):
        if rule.sequential:
            sequential_prune(held.loaded, held.calib, ratios, rule, None, held.config.batch_size)
        else:
            prune_magnitude_per_matrix(held.loaded, ratios)
    return zero_fraction(held.loaded)


def perplexity(model, text: str = "wiki/test", windows: int = 8, seqlen: int = DEFAULTS.seqlen,
               tokenizer=None) -> float:
    """Perplexity of `model` as it is now on the first `windows` windows of `seqlen` tokens of
    `text` (a built-in or online text name, or a local text file), every token counted once."""
    check_text(text)
    held = _held(model, tokenizer, None, DEFAULTS.calib_windows, seqlen)
    with _evaluating(held.loaded.model):
        return held.perplexity(text, windows)


def run_config(preset: str = "quick", settings: dict | None = None, **overrides):
    """A checked RunConfig: the preset's settings (dsa/search/presets/), then `settings` (a nested
    dict, as a --config file holds), then `overrides` (top-level keys), e.g.
    run_config("transfer", {"search": {"generations": 4}}, name="loo")."""
    from dsa.search import settings as layered
    from dsa.search.runner import RunConfig

    tree = layered.default_tree(preset)
    for layer, where in ((settings or {}, "settings"), (overrides, "overrides")):
        tree = layered.merge(tree, layer, RunConfig(), where)
    return layered.run_config(tree, tree["name"] if "name" in (settings or {}) or "name" in overrides else None)


def run_search(preset: str = "quick", settings: dict | None = None, *, workers: int | None = 0,
               address: str | None = None, **overrides) -> dict:
    """Run a search and return its report (also written to results/<name>/). The settings as in
    `run_config`; `workers` 0 evaluates in this process (default), None or N > 0 on Ray actors;
    `address` joins a Ray cluster. A run name already used is refused, as search.py refuses it."""
    from dsa.search import checkpoint
    from dsa.search.runner import run

    config = run_config(preset, settings, **overrides)
    checkpoint.check_new_run(config.name, config.checkpoint_dir, config.results_dir)
    return run(config, workers=workers, address=address)

"""apply.py's measurements on one model in this process: an allocation (a function or a baseline)
against uniform, a table of baselines and functions x sparsities (with the paired test of each
function against each baseline), and LoRA recovery after pruning."""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

from dsa.core.errors import UserError

from .amplitude import perplexities_of
from .atp import atp_choice
from .grids import Choosing
from .measurer import Read
from .paired import paired_gap
from .session import SessionMeasurer
from .tuning import function_allocation, tune_function


def allocation_of(measurer: SessionMeasurer, sparsity: float, choosing: Choosing, function: dict | None = None,
                  method: str = "uniform", atp_step: float | None = None) -> tuple[list, list | None, dict]:
    """(ratios, per-block metric, options used) of a function, or of a baseline; ATP's step is
    `atp_step`, or chosen on `choosing` with the final pruner (the options record the choice)."""
    options = dict(vars(measurer.options))
    if function is not None:
        return (*function_allocation(measurer, measurer.model, function, sparsity), options)
    atp = atp_choice(measurer, measurer.model, sparsity, choosing, atp_step) if method == "atp" else None
    if atp is not None:
        options = vars(dataclasses.replace(measurer.options, atp_step=atp["step"])) | {"atp": atp}
    ratios, metric = measurer.baseline(measurer.model, method, sparsity, atp["step"] if atp else None)
    return ratios, metric, options


def evaluate(measurer: SessionMeasurer, sparsity: float, texts: Sequence[str], windows: int, choosing: Choosing, *,
             function: dict | None = None, method: str = "uniform", atp_step: float | None = None,
             tune_spread: bool = False, tune_z: float = 0.0, uniform: bool = False, zero_shot=None) -> dict:
    """Prune with a function (its amplitude chosen on `choosing` with `tune_spread`) or a baseline,
    and measure `texts` on `windows` windows each, beside the dense model and (with `uniform`)
    uniform ratios; with `zero_shot`, its accuracy too. The model stays pruned by the allocation."""
    dense = measurer.dense(measurer.model, texts, windows)  # before any pruning, tuning's too
    tuning = None
    if tune_spread:
        function, tuning = tune_function(measurer, measurer.model, function, sparsity, choosing, tune_z)
    ratios, metric, options = allocation_of(measurer, sparsity, choosing, function, method, atp_step)
    label = "function" if function is not None else method
    reference = None
    if uniform:
        uniform_ratios, _ = measurer.baseline(measurer.model, "uniform", sparsity)
        reference = measurer.prune_and_measure(uniform_ratios, texts, windows, "uniform", zero_shot)
    result = measurer.prune_and_measure(ratios, texts, windows, label, zero_shot)  # the model stays in this state
    return {"allocation": label, "function": function, "options": options, "tune_spread": tuning,
            "sparsity": sparsity, "achieved_sparsity": result["achieved_sparsity"], "ratios": ratios,
            "block_metric": metric, "dense_ppl": dense, "ppl": result["ppl"],
            "uniform_ppl": reference["ppl"] if reference else None,
            "uniform": {k: reference[k] for k in ("achieved_sparsity", "ratios")} if reference else None,
            "zero_shot": result.get("zero_shot"),
            "uniform_zero_shot": reference.get("zero_shot") if reference else None}


def compare(measurer: SessionMeasurer, sparsities: Sequence[float], methods: Sequence[str], texts: Sequence[str],
            windows: int, choosing: Choosing, atp_step: float | None = None, functions: dict[str, dict] | None = None,
            per_window: bool = False) -> Iterator[tuple[dict, list, dict | None, dict | None]]:
    """Every method, then every function (label -> document), at every sparsity pruned with the
    final pruner and measured on `texts`; yields (table row, ratios, ATP's choice or None, each
    text's per-window log-perplexities with `per_window`, else None) as each is measured, and
    leaves the model dense. With `per_window` a row's perplexities come from those windows."""
    for sparsity in sparsities:
        for label, ratios, atp in _allocations(measurer, sparsity, methods, functions or {}, choosing, atp_step):
            row, losses = _measure_row(measurer, label, sparsity, ratios, texts, windows, per_window)
            yield row, ratios, atp, losses
    measurer.session.restore()


def _allocations(measurer: SessionMeasurer, sparsity: float, methods: Sequence[str], functions: dict[str, dict],
                 choosing: Choosing, atp_step: float | None) -> Iterator[tuple[str, list, dict | None]]:
    """(label, ratios, ATP's choice or None) of each method, then of each function."""
    for method in methods:
        atp = atp_choice(measurer, measurer.model, sparsity, choosing, atp_step) if method == "atp" else None
        ratios, _ = measurer.baseline(measurer.model, method, sparsity, atp["step"] if atp else None)
        yield method, ratios, atp
    for label, function in functions.items():
        try:
            ratios, _ = function_allocation(measurer, measurer.model, function, sparsity)
        except ValueError as err:
            raise UserError(f"--function {label} gives no valid ratios at sparsity {sparsity:g}: {err}")
        yield label, ratios, None


def _measure_row(measurer: SessionMeasurer, label: str, sparsity: float, ratios: list, texts: Sequence[str],
                 windows: int, per_window: bool) -> tuple[dict, dict | None]:
    tag = f"{label}@{sparsity:g}"
    if per_window:
        achieved = measurer.prune(ratios)
        losses = measurer.read(Read(tuple(texts), windows, per_window=True), tag)
        ppl = perplexities_of(losses)
    else:
        result = measurer.prune_and_measure(ratios, texts, windows, tag)
        achieved, ppl, losses = result["achieved_sparsity"], result["ppl"], None
    return {"method": label, "sparsity": sparsity, "achieved": achieved, **ppl}, losses


def paired_rows(losses: dict[tuple[str, float], dict[str, list[float]]], functions: Sequence[str]) -> list[dict]:
    """Each function against each baseline measured at the same sparsity, per text: the paired
    test over the windows (dsa/protocol/paired.py). `losses`: (label, sparsity) -> per-window
    log-perplexities per text, as compare yields them."""
    rows = []
    for (label, sparsity), mine in losses.items():
        if label not in functions:
            continue
        for (other, at), theirs in losses.items():
            if at != sparsity or other in functions:
                continue
            for text, values in mine.items():
                rows.append({"sparsity": sparsity, "function": label, "against": other, "text": text,
                             "perplexity": perplexities_of({text: values})[text],
                             "against_perplexity": perplexities_of({text: theirs[text]})[text],
                             **paired_gap(values, theirs[text])})
    return rows


def finetune(measurer: SessionMeasurer, steps: int, text: str, windows: int, rank: int, lr: float, batch_size: int,
             checkpoint_dir: str, texts: Sequence[str], eval_windows: int, label: str) -> dict:
    """LoRA on the pruned model in place (merged, zeros re-applied), then `texts` again."""
    from evaluators.lora import finetune_lora

    session = measurer.session
    loaded = session.calibrated.loaded
    zeros_before = _zeros(loaded)
    stats = finetune_lora(loaded.model, session.calibrated.windows(text, windows), steps, rank=rank, lr=lr,
                          batch_size=batch_size, checkpoint_dir=checkpoint_dir)
    session.calibrated.pruner.mark_modified()  # weights changed outside the pruner
    zeros_after = _zeros(loaded)
    if zeros_after < zeros_before:
        raise RuntimeError(f"LoRA lost zeros: {zeros_before} before, {zeros_after} after")
    ppl = session.perplexities(texts, eval_windows, f"{label}+lora")
    return {"ppl": ppl, "zeros_before": zeros_before, "zeros_after": zeros_after, "text": text,
            "windows": windows, "checkpoint_dir": str(checkpoint_dir),
            **{k: stats[k] for k in ("steps", "resumed_from", "losses", "seconds_per_step", "trainable_params",
                                     "delta_removed_fraction")}}


def _zeros(loaded) -> int:
    return sum(int((layer.weight == 0).sum()) for b in loaded.blocks for layer in b.linears.values())

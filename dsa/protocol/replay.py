"""Held-out replay: a found function and every baseline on a model the search never read, measured
with the final pruner only (no search fitness exists there)."""
from __future__ import annotations

from typing import Sequence

from .atp import atp_from_training
from .grids import Choosing
from .measurer import Measurer, final_perplexities
from .tuning import function_allocation, tune_on_model


def replay(measurer: Measurer, model: str, function: dict, sparsity: float, baselines: Sequence[str],
           atp_choices: Sequence[dict], texts: Sequence[str], windows: int, dense: dict,
           tune: Choosing | None = None, switch_z: float = 0.0) -> dict:
    """The held-out table of one (model, sparsity): the function ("best"), each baseline (ATP with
    the lambda the training models' `atp_choices` agree on), with `tune` the function and ATP with
    their constants chosen on this model's tuning texts; each pruned and measured on `texts`.
    `dense`: the model's unpruned row, measured once per model."""
    allocations = {"best": function_allocation(measurer, model, function, sparsity)}
    atp = atp_from_training(atp_choices, sparsity, len(measurer.sizes(model)))
    for name in baselines:
        allocations[name] = tuple(measurer.baseline(model, name, sparsity, atp["step"]))
    tuning = {}
    if tune is not None:
        tuned, tuning = tune_on_model(measurer, model, function, sparsity, atp["lambda"], tune, switch_z)
        allocations.update(tuned)
    final = final_perplexities(measurer, [(model, ratios) for ratios, _ in allocations.values()], texts, windows)
    entries = {name: {"ratios": ratios, "block_metric": metric, "val_fitness": None, "final": measured}
               for (name, (ratios, metric)), measured in zip(allocations.items(), final)}
    return {"model": model, "sparsity": sparsity, "trained": False, "allocations": entries, "dense": dense,
            "atp": atp, "tuning": tuning}

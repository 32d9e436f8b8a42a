"""ATP, the strongest fixed baseline, with one rule everywhere: its lambda (the spread of its depth
ramp) is chosen on validation text with the final pruner, from ATP's grid of lambdas; the choice
and its grid are recorded. A model the search never read takes the lambda the training models'
grids agree on best (the multi-model score)."""
from __future__ import annotations

from typing import Sequence

from dsa.allocation.baselines import atp_grid
from dsa.core.constants import ATP_LAMBDAS

from .grids import Choosing, choose, measure_grid
from .measurer import Measurer
from .score import multi_model_score


def atp_points(measurer: Measurer, model: str, sparsity: float) -> list[tuple[float, float, list, list | None]]:
    """(lambda, step, ratios, per-block metric) at each legal lambda of ATP's grid on `model`."""
    n_blocks = len(measurer.sizes(model))
    return [(lam, step, *measurer.baseline(model, "atp", sparsity, step))
            for lam, step in atp_grid(n_blocks, sparsity, ATP_LAMBDAS)]


def choose_atp(measurer: Measurer, targets: Sequence[tuple[str, float]], choosing: Choosing) -> list[dict]:
    """ATP's lambda for each (model, sparsity): the grid point with the lowest perplexity on the
    choosing texts after pruning with the final pruner; all targets' grids in one batch. Each
    record holds the chosen lambda and step and every grid point's row."""
    grids = [atp_points(measurer, model, sparsity) for model, sparsity in targets]
    routed = [(model, ratios) for (model, _), points in zip(targets, grids) for _, _, ratios, _ in points]
    rows = iter(measure_grid(measurer, routed, choosing, "ATP grid"))
    choices = []
    for (_, sparsity), points in zip(targets, grids):
        grid = [{"lambda": lam, "step": step, **next(rows)} for lam, step, _, _ in points]
        index, _ = choose([row["lambda"] for row in grid], grid, choosing)
        choices.append({"lambda": grid[index]["lambda"], "step": grid[index]["step"], "sparsity": sparsity,
                        "chosen_on": choosing.label, "windows": choosing.windows, "pruner": measurer.pruner,
                        "grid": grid})
    return choices


def atp_choice(measurer: Measurer, model: str, sparsity: float, choosing: Choosing,
               step: float | None = None) -> dict:
    """ATP's step on one model: `step` when the user gives it (apply.py --atp-step), else chosen."""
    if step is not None:
        return {"step": step, "chosen_by": "--atp-step"}
    return choose_atp(measurer, [(model, sparsity)], choosing)[0]


def atp_from_training(choices: Sequence[dict], sparsity: float, n_blocks: int) -> dict:
    """ATP on a model the search never read: the lambda with the lowest multi-model score over the
    training models' ATP grids at this sparsity (each model's perplexity on its choosing text,
    relative to the point it chose itself: 0 means every model's own best); the step follows from
    this model's depth. Without training grids, ATP's smallest lambda."""
    chosen = [c for c in choices if c["sparsity"] == sparsity and "grid" in c]
    lam, scores = ATP_LAMBDAS[0], []
    if chosen:
        rows = [{row["lambda"]: row[c["chosen_on"]] for row in c["grid"]} for c in chosen]
        own = [row[c["lambda"]] for row, c in zip(rows, chosen)]
        for value in [v for v in rows[0] if all(v in row for row in rows)]:  # legal on every model
            scores.append({"lambda": value, "score": multi_model_score([row[value] for row in rows], own)})
        lam = min(scores, key=lambda point: point["score"])["lambda"]
    legal = [step for value, step in atp_grid(n_blocks, sparsity, ATP_LAMBDAS) if value == lam]
    return {"lambda": lam, "step": legal[0] if legal else 0.0, "chosen_on": "training models", "grid": scores}

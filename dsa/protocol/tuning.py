"""A function on a new model: its ratios there, and its amplitude (map constant) chosen there.

The shape comes from the function (found on other models), the amplitude from the new model:
each constant of the function's grid (ATP's lambdas for a lambda map, the eps grid for
AlphaPruning's) pruned with the final pruner, chosen as ATP's lambda is (grids.py).
"""
from __future__ import annotations

from dsa.core.errors import UserError
from dsa.functions.files import is_matrix_function, map_of, with_map_constant
from dsa.functions.pipeline import allocation_ratios, block_values, importance_node
from dsa.functions.replay import amplitude_grid, function_root

from .atp import atp_points
from .grids import Choosing, tune
from .measurer import Measurer


def function_allocation(measurer: Measurer, model: str, function: dict, sparsity: float) -> tuple[list, list]:
    """(ratios, importance values before the map) of a validated function on `model`: per block, or
    for a per-matrix function one {linear name: ratio} per block and one value per matrix;
    ValueError when its ratios leave [0, 1)."""
    root, memo = function_root(function), measurer.features(model, is_matrix_function(function))
    units = memo.units
    ratios = allocation_ratios(root, memo, measurer.sizes(model) if units is None else units.sizes, sparsity).tolist()
    values = [float(v) for v in block_values(importance_node(root), memo)]
    return (ratios if units is None else units.entries(ratios)), values


def function_points(measurer: Measurer, model: str, function: dict, sparsity: float,
                    with_own: bool = False) -> tuple[list[tuple], list[dict]]:
    """(value, ratios, per-block values) at each constant of the function's amplitude grid (and
    its own constant, `with_own`, as the paired test's reference) that gives valid ratios; the
    others as {"value", "invalid": why}."""
    values = amplitude_grid(function)
    own = map_of(function)[1]
    if with_own and own not in values:
        values = sorted({*values, own})
    points, invalid = [], []
    for value in values:
        try:
            points.append((value, *function_allocation(measurer, model, with_map_constant(function, value), sparsity)))
        except ValueError as err:  # ratios outside [0, 1) at this amplitude: not a candidate
            invalid.append({"value": value, "invalid": str(err)})
    if not points:
        raise UserError(f"no constant of the grid gives valid ratios at sparsity {sparsity:g}")
    return points, invalid


def tune_function(measurer: Measurer, model: str, function: dict, sparsity: float, choosing: Choosing,
                  switch_z: float = 0.0) -> tuple[dict, dict]:
    """The function with its map constant chosen on `model`; with `switch_z`, only when the lowest
    beats the file's own constant by that many standard errors. Returns (tuned function, record)."""
    own = map_of(function)[1]
    points, invalid = function_points(measurer, model, function, sparsity, with_own=bool(switch_z))
    ((value, _, _), record), = tune(measurer, model, {"function": (points, own)}, choosing, switch_z).values()
    return with_map_constant(function, value), {"file_constant": own, **record, **_invalid(invalid)}


def tune_on_model(measurer: Measurer, model: str, function: dict, sparsity: float, atp_lambda: float,
                  choosing: Choosing, switch_z: float = 0.0) -> tuple[dict, dict]:
    """A held-out model's "best-tuned" (the function with its map constant chosen there) and
    "atp-tuned" (ATP with its lambda chosen there), both grids in one batch; with `switch_z`, each
    keeps the training models' constant (the function's own, ATP's `atp_lambda`) unless beaten by
    that many standard errors. Only the choosing texts are read to choose.

    Returns ({name: (ratios, per-block values)}, {name: record})."""
    own = map_of(function)[1]
    points, invalid = function_points(measurer, model, function, sparsity, with_own=bool(switch_z))
    atp = [(lam, ratios, metric) for lam, _, ratios, metric in atp_points(measurer, model, sparsity)]
    chosen = tune(measurer, model, {"best-tuned": (points, own), "atp-tuned": (atp, atp_lambda)}, choosing, switch_z)
    allocations = {name: tuple(point[1:]) for name, (point, _) in chosen.items()}
    records = {name: record for name, (_, record) in chosen.items()}
    records["best-tuned"].update(_invalid(invalid))
    return allocations, records


def _invalid(rows: list[dict]) -> dict:
    """The grid's constants that gave no valid ratios, recorded only where there are some."""
    return {"invalid": rows} if rows else {}

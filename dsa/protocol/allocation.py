"""An allocation's ratios on a model without pruning it, from as little of the model as it reads.

A function whose only operand is `depth`, and the baselines that read only the blocks' shapes
(uniform, ER, ATP at a given step), need the block count and each block's prunable parameter
counts: they run on the model's architecture (evaluators.architecture.Layout, no weight read).
Any other allocation reads scores or weights: it runs on a calibrated model (an EvaluationSession).
Both give the same ratios for the same model (the parameter counts are the same).
"""
from __future__ import annotations

from dsa.allocation.allocate import SHAPE_METHODS, BaselineOptions, baseline_ratios
from dsa.allocation.matrices import MatrixUnits, expand, owl_matrix_ratios, per_matrix
from dsa.core.errors import UserError
from dsa.functions.codec import DEPTH, SHARE
from dsa.functions.files import is_matrix_function, to_names
from dsa.functions.genome import MATRIX_OPERANDS
from dsa.functions.replay import function_ratios
from evaluators.architecture import Layout


def operands_of(function: dict) -> set[str]:
    """The operands a validated function reads (wanda, magnitude, weight, depth, share)."""
    return set(to_names(function)) & set(MATRIX_OPERANDS)


def needs_weights(function: dict | None = None, method: str = "uniform") -> bool:
    """Whether the allocation reads the model's weights or scores (else its architecture is enough)."""
    if function is not None:
        return not operands_of(function) <= {DEPTH, SHARE}
    return method not in SHAPE_METHODS


def block_names_and_sizes(model) -> tuple[list[str], list[int]]:
    """Each block's module path and prunable parameter count, of a Layout or an EvaluationSession."""
    blocks = model.blocks if isinstance(model, Layout) else model.calibrated.blocks
    return [b.name for b in blocks], [int(b.size) for b in blocks]


def ratios_on(model, sparsity: float, function: dict | None = None, method: str = "uniform",
              options: BaselineOptions = BaselineOptions()) -> tuple[list[float], list[float] | None]:
    """(ratios, per-block values: the function's importance before its map, or the baseline's
    metric) on `model`: a Layout (depth functions, SHAPE_METHODS) or an EvaluationSession."""
    if function is not None:
        if is_matrix_function(function):
            raise UserError("the function sets one ratio per matrix: use matrix granularity (--granularity matrix)")
        return _function_ratios(model, function, sparsity)
    calibrated = model if isinstance(model, Layout) else model.calibrated
    return baseline_ratios(method, calibrated, sparsity, options)


def _function_ratios(model, function: dict, sparsity: float, units: MatrixUnits | None = None):
    try:
        return function_ratios(function, model.block_matrices, model.n_blocks, model.sizes, sparsity, units=units)
    except ValueError as err:  # ratios outside [0, 1), or a budget no ratios meet
        raise UserError(f"the function gives no valid ratios at sparsity {sparsity:g}: {err}")


# Baselines with a per-matrix form: uniform and ATP's ramp (every matrix at its block's ratio) and
# OWL with its outlier ratio per matrix.
MATRIX_METHODS = ("uniform", "owl", "atp")


def matrix_ratios_on(model, sparsity: float, method: str = "uniform", options: BaselineOptions = BaselineOptions(),
                     function: dict | None = None) -> tuple[list[dict[str, float]], list[float] | None]:
    """(one {linear name: ratio} per block, the per-matrix or per-block metric) of a function or a
    baseline at matrix granularity, on a Layout (functions of depth and share, uniform, ATP at a
    given step) or an EvaluationSession. A per-block function runs on each matrix (no role offsets)."""
    blocks = model.blocks if isinstance(model, Layout) else model.calibrated.blocks
    if function is not None:
        flat, values = _function_ratios(model, function, sparsity, MatrixUnits.of(blocks))
        return per_matrix(flat, blocks), values
    if method not in MATRIX_METHODS:
        raise UserError(f"{method} gives one ratio per block; at matrix granularity use {', '.join(MATRIX_METHODS)}")
    if method == "owl":
        scores = [model.block_matrices("wanda", block.index) for block in blocks]
        ratios, metric = owl_matrix_ratios(scores, blocks, sparsity, options.owl_m, options.owl_lambda)
        return ratios, metric.tolist()
    block_ratios, metric = ratios_on(model, sparsity, method=method, options=options)
    return expand(block_ratios, blocks), metric

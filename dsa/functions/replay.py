"""Replay a function file on any loaded model: validated JSON -> genome -> per-block ratios."""
from __future__ import annotations

import json

from dsa.core.constants import ATP_LAMBDAS
from dsa.core.errors import UserError
from dsa.core.guards import DEFAULT_GUARDS, Guards
from dsa.core.paths import check_input_file

from . import library
from .codec import CONSTANT_KINDS, stage_of
from .files import MAX_FILE_BYTES, FunctionError, is_matrix_function, map_of, to_names
from .genome import (EPS_GRID, LAMBDA_GRID, LAMBDA_MAPS, MATRIX_OPERANDS, OFFSET_GRID, at_matrix_granularity,
                     build_pset)
from .pipeline import FeatureMemo, Node, allocation_ratios, block_values, importance_node, parse

# A superset: accepts linear, tree-shaped and per-matrix functions.
_PSET = build_pset(arithmetic=True, operands=MATRIX_OPERANDS, granularity="matrix")


def load_function(path) -> dict:
    """Read and validate a function file, or a named function of the library (`dsa/functions/
    library/`); every problem becomes a one-line UserError."""
    path = library.path_of(str(path)) or check_input_file(path)
    with path.open("rb") as file:
        raw = file.read(MAX_FILE_BYTES + 1)  # bounded, whatever the size says
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(f"{path} is larger than {MAX_FILE_BYTES} bytes; not a function file")
    try:
        document = json.loads(raw.decode("utf-8"))
        to_names(document)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and FunctionError are ValueErrors
        kind = "invalid function" if isinstance(err, FunctionError) else "not valid JSON"
        raise UserError(f"{path}: {kind}: {err}")
    return document


def seed_names(spec: str, operands, arithmetic: bool, granularity: str = "block") -> list[str]:
    """A library name or function file as a genome the search can start from (its prefix names);
    a per-block function seeds a per-matrix search as itself run per matrix, with no role offsets.

    The search's genomes hold only grid constants and the operands it may read, so a seed off the
    grid, reading another operand, tree-shaped without `arithmetic`, or per-matrix in a per-block
    search is refused in one line."""
    document = load_function(spec)
    if is_matrix_function(document) and granularity != "matrix":
        raise UserError(f"seed {spec} sets one ratio per matrix: search with --granularity matrix")
    off_grid = [role for role, value in document.get("roles", {}).items() if value not in OFFSET_GRID]
    if off_grid:
        raise UserError(f"seed {spec}: its offsets of {', '.join(off_grid)} are not on the search's grid "
                        f"({', '.join(f'{g:g}' for g in OFFSET_GRID)})")
    kind, value = map_of(document)
    grid = LAMBDA_GRID if kind in LAMBDA_MAPS else EPS_GRID
    if value not in grid:
        raise UserError(f"seed {spec}: its map constant {value:g} is not on the search's grid "
                        f"({', '.join(f'{g:g}' for g in grid)})")
    names = to_names(document)
    read = set(names) & set(MATRIX_OPERANDS)
    if not read <= set(operands):
        raise UserError(f"seed {spec} reads {', '.join(sorted(read - set(operands)))}, "
                        f"which this search's operands ({', '.join(operands)}) leave out")
    if "op" in document["importance"] and not arithmetic:
        raise UserError(f"seed {spec} joins reductions by arithmetic: search with --arithmetic")
    return at_matrix_granularity(names) if granularity == "matrix" and not is_matrix_function(document) else names


def function_root(document: dict) -> Node:
    """A validated function as the tree the interpreter runs."""
    # A file's map constant may lie off the search's grid: constants are leaves, not in the pset.
    return parse(to_names(document), lambda name: 0 if stage_of(name) in CONSTANT_KINDS else _PSET.mapping[name].arity)


def amplitude_grid(document: dict) -> tuple[float, ...]:
    """The map constants a function's amplitude is tuned over on a new model, as ATP's difference
    is: ATP's lambdas for a lambda map (OWL's, DSA's), the eps grid for AlphaPruning's."""
    return ATP_LAMBDAS if map_of(document)[0] in LAMBDA_MAPS else EPS_GRID


def function_ratios(document: dict, block_mats, n_blocks: int, sizes, sparsity: float,
                    guards: Guards = DEFAULT_GUARDS, units=None):
    """(ratios, importance values before the map) of a validated function; `guards`: the ops' guard
    constants (the guard check passes MOVED_GUARDS). With `units` (the model's MatrixUnits) the
    function runs per matrix and both lists have one entry per matrix (in matrix_table's order;
    `sizes` is then ignored: the matrices' own counts weigh the budget); a per-matrix function
    needs them."""
    if is_matrix_function(document) and units is None:
        raise ValueError("a per-matrix function (it has role offsets) gives one ratio per matrix: use matrix granularity")
    root = function_root(document)
    memo = FeatureMemo.over(block_mats, n_blocks, guards, units)
    ratios = allocation_ratios(root, memo, units.sizes if units is not None else sizes, sparsity)
    values = block_values(importance_node(root), memo)
    return ratios.tolist(), [float(v) for v in values]

"""Replay a function file on any loaded model: validated JSON -> genome -> per-block ratios."""
from __future__ import annotations

import json

from dsa.core.constants import ATP_LAMBDAS
from dsa.core.errors import UserError
from dsa.core.guards import DEFAULT_GUARDS, Guards
from dsa.core.paths import check_input_file

from . import library
from .codec import CONSTANT_KINDS, stage_of
from .files import MAX_FILE_BYTES, FunctionError, map_of, to_names
from .genome import EPS_GRID, LAMBDA_GRID, LAMBDA_MAPS, OPERANDS, build_pset
from .pipeline import FeatureMemo, Node, allocation_ratios, block_values, parse

_PSET = build_pset(arithmetic=True)  # a superset: accepts linear and tree-shaped functions


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


def seed_names(spec: str, operands, arithmetic: bool) -> list[str]:
    """A library name or function file as a genome the search can start from (its prefix names).

    The search's genomes hold only grid constants and the operands it may read, so a seed off the
    grid, reading another operand, or tree-shaped without `arithmetic` is refused in one line."""
    document = load_function(spec)
    kind, value = map_of(document)
    grid = LAMBDA_GRID if kind in LAMBDA_MAPS else EPS_GRID
    if value not in grid:
        raise UserError(f"seed {spec}: its map constant {value:g} is not on the search's grid "
                        f"({', '.join(f'{g:g}' for g in grid)})")
    names = to_names(document)
    read = set(names) & set(OPERANDS)
    if not read <= set(operands):
        raise UserError(f"seed {spec} reads {', '.join(sorted(read - set(operands)))}, "
                        f"which this search's operands ({', '.join(operands)}) leave out")
    if "op" in document["importance"] and not arithmetic:
        raise UserError(f"seed {spec} joins reductions by arithmetic: search with --arithmetic")
    return names


def function_root(document: dict) -> Node:
    """A validated function as the tree the interpreter runs."""
    # A file's map constant may lie off the search's grid: constants are leaves, not in the pset.
    return parse(to_names(document), lambda name: 0 if stage_of(name) in CONSTANT_KINDS else _PSET.mapping[name].arity)


def amplitude_grid(document: dict) -> tuple[float, ...]:
    """The map constants a function's amplitude is tuned over on a new model, as ATP's difference
    is: ATP's lambdas for a lambda map (OWL's, DSA's), the eps grid for AlphaPruning's."""
    return ATP_LAMBDAS if map_of(document)[0] in LAMBDA_MAPS else EPS_GRID


def function_ratios(document: dict, block_mats, n_blocks: int, sizes, sparsity: float,
                    guards: Guards = DEFAULT_GUARDS):
    """(ratios, per-block importance values before the map) of a validated function; `guards`:
    the ops' guard constants (the guard check passes MOVED_GUARDS)."""
    root = function_root(document)
    memo = FeatureMemo.over(block_mats, n_blocks, guards)
    ratios = allocation_ratios(root, memo, sizes, sparsity)
    values = block_values(root.children[0], memo)
    return ratios.tolist(), [float(v) for v in values]

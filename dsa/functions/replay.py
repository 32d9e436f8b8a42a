"""Replay a function file on any loaded model: validated JSON -> genome -> per-block ratios."""
from __future__ import annotations

import json

from evaluators.errors import UserError
from evaluators.paths import check_input_file

from .files import MAX_FILE_BYTES, FunctionError, to_names
from .genome import build_pset
from .pipeline import FeatureMemo, allocation_ratios, block_values, parse

_PSET = build_pset(arithmetic=True)  # a superset: accepts linear and tree-shaped functions


def load_function(path) -> dict:
    """Read and validate a function file; every problem becomes a one-line UserError."""
    path = check_input_file(path)
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


def function_ratios(document: dict, block_mats, n_blocks: int, sizes, sparsity: float):
    """(ratios, per-block importance values before the map) of a validated function."""
    names = to_names(document)
    root = parse(names, lambda name: _PSET.mapping[name].arity)
    memo = FeatureMemo.over(block_mats, n_blocks)
    ratios = allocation_ratios(root, memo, sizes, sparsity)
    values = block_values(root.children[0], memo)
    return ratios.tolist(), [float(v) for v in values]

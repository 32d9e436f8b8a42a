"""An allocation's ratios as files other tools read: ratios.json (with where they came from) and
ratios.csv (block, module path, prunable parameters, ratio), one row per decoder block in model
order; a per-matrix allocation has one row per prunable matrix (with its role) instead."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from dsa.allocation.matrices import flatten, matrix_table
from dsa.core.storage import atomic_write_text

FORMAT = "dsa-ratios"
VERSION = 1


def weighted_mean(ratios: Sequence[float], sizes: Sequence[int]) -> float:
    """The parameter-weighted mean of the ratios: the global sparsity they prune to."""
    return sum(r * s for r, s in zip(ratios, sizes, strict=True)) / sum(sizes)


def write_ratio_files(out: Path, info: dict, block_names: Sequence[str], sizes: Sequence[int],
                      ratios: Sequence[float]) -> list[Path]:
    """ratios.json ({"format", "version", **info, "weighted_sparsity", "ratios", "block_names",
    "block_params"}) and ratios.csv in `out` (created); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    ratios = [float(r) for r in ratios]
    document = {"format": FORMAT, "version": VERSION, **info, "weighted_sparsity": weighted_mean(ratios, sizes),
                "ratios": ratios, "block_names": list(block_names), "block_params": [int(s) for s in sizes]}
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["block", "name", "params", "ratio"])
    writer.writerows([i, name, int(size), repr(ratio)] for i, (name, size, ratio) in enumerate(zip(block_names, sizes, ratios)))
    return [atomic_write_text(out / "ratios.json", json.dumps(document, indent=2) + "\n"),
            atomic_write_text(out / "ratios.csv", table.getvalue())]


def write_matrix_ratio_files(out: Path, info: dict, blocks, ratios) -> list[Path]:
    """ratios.json ({"format", "version", **info, "granularity": "matrix", "weighted_sparsity",
    "ratios": one {linear name: ratio} per block, "block_names"}) and ratios.csv with one row per
    matrix (block, module path, role, parameters, ratio); `blocks`: evaluators' Block list."""
    out.mkdir(parents=True, exist_ok=True)
    table, flat = matrix_table(blocks), flatten(ratios, blocks)
    sizes = [count for *_, count in table]
    document = {"format": FORMAT, "version": VERSION, **info, "granularity": "matrix",
                "weighted_sparsity": weighted_mean(flat, sizes),
                "ratios": [{name: float(r) for name, r in entry.items()} for entry in ratios],
                "block_names": [b.name for b in blocks]}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["block", "name", "role", "params", "ratio"])
    writer.writerows([index, f"{blocks[index].name}.{name}", role, count, repr(ratio)]
                     for (index, name, role, count), ratio in zip(table, flat))
    return [atomic_write_text(out / "ratios.json", json.dumps(document, indent=2) + "\n"),
            atomic_write_text(out / "ratios.csv", text.getvalue())]

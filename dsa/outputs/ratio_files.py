"""An allocation's per-block ratios as files other tools read: ratios.json (with where they came
from) and ratios.csv (block, module path, prunable parameters, ratio), one row per decoder block
in model order."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

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

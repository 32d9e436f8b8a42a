"""Choosing a constant on a grid with the final pruner: each grid point pruned once, measured on
the choosing texts window by window, and chosen by the rules of amplitude.py.

Used for ATP's lambda (atp.py) and a function's map constant on a new model (tuning.py), by the
search's report and by apply.py alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .amplitude import choice_score, choose_amplitude, perplexities_of
from .measurer import Measurer, Read, final_reads


@dataclass(frozen=True)
class Choosing:
    """Where a grid's constant is chosen: `texts` (several: the lowest geometric mean of their
    perplexities), their first `windows` windows each, measured per window (for the paired test);
    `reported`: other texts measured at every grid point too, on `report_windows`, to show what
    each constant gives there (never read to choose). Repeated texts count once."""

    texts: tuple[str, ...]
    windows: int
    reported: tuple[str, ...] = ()
    report_windows: int = 0

    def __post_init__(self):
        texts = tuple(dict.fromkeys(self.texts))
        object.__setattr__(self, "texts", texts)  # a choosing text keeps its `windows` value when also reported
        object.__setattr__(self, "reported", tuple(t for t in dict.fromkeys(self.reported) if t not in texts))

    @property
    def label(self) -> str:
        """The grid rows' key the choice is made by: one text, or several joined by " + "."""
        return " + ".join(self.texts)

    def reads(self) -> list[Read]:
        reads = [Read(self.texts, self.windows, per_window=True)]
        return reads + [Read(self.reported, self.report_windows)] if self.reported else reads

    def row(self, measured: list[dict]) -> dict:
        """A grid row: each choosing text's perplexity (and their combined score), each reported
        text's, and the choosing texts' per-window log-perplexities."""
        losses = measured[0]
        row = perplexities_of(losses)
        choice_score(row, self.texts)
        if self.reported:
            row.update(measured[1])
        row["window_log_ppl"] = losses
        return row


def measure_grid(measurer: Measurer, routed: Sequence[tuple[str, list[float]]], choosing: Choosing,
                 desc: str = "grid") -> list[dict]:
    """Each (model, ratios) grid point's row, all in one batch (equal allocations pruned once)."""
    return [choosing.row(measured) for measured in final_reads(measurer, routed, choosing.reads(), desc)]


def choose(values: list[float], rows: list[dict], choosing: Choosing, reference: float | None = None,
           switch_z: float = 0.0) -> tuple[int, dict]:
    """The index of the chosen constant among `values` (their grid rows alongside): the lowest,
    or with `switch_z` the reference (when on the grid) unless the lowest beats it by that many
    standard errors; and how it was chosen."""
    losses = [row["window_log_ppl"] for row in rows]
    return choose_amplitude(values, losses, choosing.texts, reference if reference in values else None, switch_z)


def tune(measurer: Measurer, model: str, grids: dict[str, tuple[list, float | None]], choosing: Choosing,
         switch_z: float = 0.0) -> dict[str, tuple[tuple, dict]]:
    """Several named grids of (value, ratios, per-block values) points on one model, measured in
    one batch (a point two grids share is pruned once), each with its reference constant; per
    name, the chosen point and the record of the choice (every point's row)."""
    routed = [(model, ratios) for points, _ in grids.values() for _, ratios, _ in points]
    rows = iter(measure_grid(measurer, routed, choosing, "amplitude grid"))
    out = {}
    for name, (points, reference) in grids.items():
        values = [value for value, _, _ in points]
        grid = [{"value": value, **next(rows)} for value in values]
        index, how = choose(values, grid, choosing, reference, switch_z)
        out[name] = (points[index], {"chosen": values[index], "chosen_on": choosing.label,
                                     "windows": choosing.windows, "grid": grid, **how})
    return out

"""Choosing an amplitude (a function's map constant, ATP's lambda) on a model, from per-window losses.

The grid's constants are each pruned once; a constant's score on the choosing texts is the mean
over texts of the mean per-window log-perplexity (the log of the geometric mean of the texts'
perplexities: each text weighs the same). The lowest score wins, unless a reference constant is
given (the one the function was found with on its training models) together with `switch_z`: then
the lowest is taken only if a paired test over the windows says it is better than the reference
by more than `switch_z` standard errors, and the reference is kept otherwise. Where two constants
are a few per cent apart on the choosing texts, which of them the test text prefers is a coin
toss (measured on held-out models: the choosing texts and the test text disagreed on such near-ties);
the training models' constant is then the better bet.
"""
from __future__ import annotations

import math
import statistics

from .paired import paired_z  # noqa: F401 (this module's test of a constant, importable from here)


def choice_score(row: dict, texts) -> str:
    """The key a grid row is chosen by: the text's own perplexity, or with several texts their
    geometric mean (the mean log-perplexity, each text weighing the same), stored in the row under
    the texts' names joined by " + "."""
    texts = list(texts)
    label = " + ".join(texts)
    if len(texts) > 1:
        row[label] = math.exp(sum(math.log(row[text]) for text in texts) / len(texts))
    return label


def perplexities_of(window_logppl: dict[str, list[float]]) -> dict[str, float]:
    """Each text's perplexity from its per-window log-perplexities (windows of equal length)."""
    return {text: math.exp(statistics.fmean(values)) for text, values in window_logppl.items()}


def choose_amplitude(values: list[float], window_logppl: list[dict[str, list[float]]], texts,
                     reference: float | None = None, switch_z: float = 0.0) -> tuple[int, dict]:
    """Index of the chosen constant among `values` (their per-window log-perplexities on `texts`
    alongside), and a record of how it was chosen."""
    texts = list(texts)
    scores = [statistics.fmean(statistics.fmean(losses[text]) for text in texts) for losses in window_logppl]
    lowest = min(range(len(values)), key=scores.__getitem__)
    if not switch_z or reference is None:
        return lowest, {"rule": "lowest"}
    if reference not in values:
        raise ValueError(f"the reference constant {reference:g} is not on the grid")
    kept = values.index(reference)
    difference, z = paired_z(window_logppl[lowest], window_logppl[kept], texts)
    switch = z < -switch_z
    return (lowest if switch else kept), {"rule": f"lowest unless within {switch_z:g} standard errors of the reference",
                                          "reference": reference, "lowest": values[lowest],
                                          "difference": difference, "z": z, "switched": switch}

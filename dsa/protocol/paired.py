"""The paired test of two prunes over the same windows, written once: is one allocation's gap to
another real, or within the windows' noise?

Each window's log-perplexity (mean next-token NLL) under both prunes; the statistic is the mean of
the per-window differences (the log of the ratio of the two geometric-mean perplexities) and its
standard error. |z| under about 2 is a tie, whatever the ratio says. Used to choose a constant
(amplitude.py), by `apply.py compare --paired` and by experiments/transfer/paired_gap.py.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def paired_difference(candidate: dict[str, list[float]], reference: dict[str, list[float]],
                      texts) -> tuple[float, float]:
    """(mean difference, candidate minus reference; its standard error). Windows are paired (the
    same windows under both); texts are independent samples, each weighing 1/len(texts)."""
    texts = list(texts)
    mean, variance = 0.0, 0.0
    for text in texts:
        diffs = [c - r for c, r in zip(candidate[text], reference[text], strict=True)]
        if len(diffs) < 2:
            raise ValueError("a paired test needs at least 2 windows per text")
        mean += statistics.fmean(diffs) / len(texts)
        variance += statistics.variance(diffs) / len(diffs) / len(texts) ** 2
    return mean, math.sqrt(variance)


def paired_z(candidate: dict[str, list[float]], reference: dict[str, list[float]], texts) -> tuple[float, float]:
    """(mean difference, that difference over its standard error); z is 0 when the two are identical."""
    mean, error = paired_difference(candidate, reference, texts)
    return mean, (mean / error if error > 0 else 0.0)


def paired_gap(candidate: Sequence[float], reference: Sequence[float]) -> dict:
    """One text's per-window log-perplexities under two prunes: the mean per-window log-ratio
    (`difference`, candidate minus reference), its `standard_error` and `z`, `ratio` (exp of the
    difference minus 1: the candidate's geometric-mean perplexity relative to the reference's) and
    `windows_lower`, the windows where the candidate is lower, of `windows`."""
    difference, error = paired_difference({"": list(candidate)}, {"": list(reference)}, [""])
    return {"difference": difference, "standard_error": error, "z": difference / error if error > 0 else 0.0,
            "ratio": math.exp(difference) - 1, "windows_lower": sum(c < r for c, r in zip(candidate, reference)),
            "windows": len(candidate)}

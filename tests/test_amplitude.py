"""Choosing a replayed function's amplitude from per-window log-perplexities (dsa/protocol/amplitude.py),
against a hand computation: the lowest geometric mean, or the training constant unless a paired test
over the windows says the lowest is better by more than Z standard errors."""
import math

import pytest

from dsa.protocol.amplitude import choice_score, choose_amplitude, paired_z, perplexities_of

VALUES = [0.04, 0.08, 0.12]
LOSSES = [  # per-window log-perplexities of two texts, three windows each, at each constant
    {"a": [2.0, 3.0, 4.0], "b": [3.0, 3.0, 3.0]},
    {"a": [0.9, 1.8, 2.9], "b": [1.9, 2.0, 1.95]},   # the lowest
    {"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 2.0]},    # the training constant
]
# 0.08 - 0.12: text a's differences -0.1, -0.2, -0.1 (mean -2/15, sample variance 1/300),
# text b's -0.1, 0, -0.05 (mean -1/20, sample variance 1/400); each text weighs 1/2.
MEAN = (-2 / 15 - 1 / 20) / 2
Z = MEAN / math.sqrt((1 / 300 / 3 + 1 / 400 / 3) / 4)  # about -4.16


def test_paired_z_by_hand():
    mean, z = paired_z(LOSSES[1], LOSSES[2], ["a", "b"])
    assert mean == pytest.approx(MEAN, rel=1e-12) and z == pytest.approx(Z, rel=1e-9)
    assert paired_z(LOSSES[2], LOSSES[2], ["a", "b"]) == (0.0, 0.0)


def test_lowest_unless_the_training_constant_is_within_z():
    assert choose_amplitude(VALUES, LOSSES, ["a", "b"]) == (1, {"rule": "lowest"})
    switched, how = choose_amplitude(VALUES, LOSSES, ["a", "b"], reference=0.12, switch_z=4.0)
    assert switched == 1 and how["switched"] and how["z"] == pytest.approx(Z, rel=1e-9) and how["lowest"] == 0.08
    kept, how = choose_amplitude(VALUES, LOSSES, ["a", "b"], reference=0.12, switch_z=4.2)
    assert kept == 2 and not how["switched"] and how["reference"] == 0.12
    # One text alone: text a's differences only (z = mean / (sd / sqrt 3)).
    alone = (-2 / 15) / math.sqrt(1 / 300 / 3)
    assert choose_amplitude(VALUES, LOSSES, ["a"], 0.12, 2.0)[1]["z"] == pytest.approx(alone, rel=1e-9)
    with pytest.raises(ValueError, match="not on the grid"):
        choose_amplitude(VALUES, LOSSES, ["a"], reference=0.1, switch_z=2.0)
    with pytest.raises(ValueError, match="at least 2 windows"):
        choose_amplitude(VALUES[1:], [{"a": [1.0]}, {"a": [2.0]}], ["a"], reference=0.12, switch_z=2.0)


def test_perplexities_and_the_combined_score():
    ppl = perplexities_of(LOSSES[2])
    assert ppl == {"a": pytest.approx(math.exp(2.0)), "b": pytest.approx(math.exp(2.0))}
    row = {"a": 4.0, "b": 9.0}
    assert choice_score(row, ["a", "b"]) == "a + b" and row["a + b"] == pytest.approx(6.0)
    assert choice_score({"a": 4.0}, ["a"]) == "a"

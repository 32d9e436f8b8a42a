"""DLP allocation: hand-computed numbers on tiny synthetic blocks, plus one real-model check.

Hand example (alpha = 0.15, S = 0.7). Block medians of the pooled scores, U = [1, 2, 3, 6]:
  sum U = 12, I = 1 - U/12 = [11, 10, 9, 6] / 12, min-max(I) = [1, 4/5, 3/5, 0],
  d = 0.3 * minmax = [0.30, 0.24, 0.18, 0.00], mean(d) = 0.18,
  R = 0.7 + 0.18 - d = [0.58, 0.64, 0.70, 0.88]
(closed form 0.7 + 0.3 * (U - 3) / 5 gives the same).
"""

import pytest
import torch

from dsa.allocation.dlp import dlp_map, dlp_metric, dlp_ratios
from dsa.allocation.ratios import weighted_mean

BUDGET_TOL = 1e-9


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# Medians of the *pooled* (concatenated) scores are 1, 2, 3, 6. Blocks 0 and 1 have two
# matrices whose own medians differ from the pooled one, so per-matrix statistics would fail.
# Block 2 has an even count: torch.median (DLP's code) takes the lower middle value, 3.
HAND_BLOCKS = [
    [t([[0.5, 1.0]]), t([[9.0]])],                   # pooled [0.5, 1, 9]        -> median 1
    [t([[2.0, 100.0], [0.0, 2.5]]), t([[1.0]])],     # pooled [2, 100, 0, 2.5, 1] -> median 2
    [t([[1.0, 3.0], [4.0, 8.0]])],                   # pooled [1, 3, 4, 8]       -> median 3
    [t([[6.0, 6.0, 7.0]]), t([[0.0], [50.0]])],      # pooled [6, 6, 7, 0, 50]   -> median 6
]
HAND_U = [1.0, 2.0, 3.0, 6.0]
HAND_RATIOS = [0.58, 0.64, 0.70, 0.88]
EQUAL = torch.ones(4, dtype=torch.float64)


def assert_close_list(actual, expected, tol=1e-12):
    assert len(actual) == len(expected)
    for a, e in zip(actual.tolist(), expected):
        assert a == pytest.approx(e, abs=tol)


def assert_budget(ratios, sizes, sparsity):
    assert abs(weighted_mean(ratios, sizes) - sparsity) <= BUDGET_TOL
    assert bool((ratios >= 0).all()) and bool((ratios <= 0.99).all())


def test_metric_is_median_of_pooled_scores():
    assert_close_list(dlp_metric(HAND_BLOCKS, statistic="median"), HAND_U)


def test_metric_mean_matches_public_code_path():
    # Means of the pooled scores: 10.5/3, 105.5/5, 16/4, 69/5.
    assert_close_list(dlp_metric(HAND_BLOCKS, statistic="mean"), [3.5, 21.1, 4.0, 13.8], tol=1e-9)


def test_ratios_by_hand():
    ratios, metric = dlp_ratios(HAND_BLOCKS, EQUAL, 0.7, statistic="median")
    assert_close_list(metric, HAND_U)
    assert_close_list(ratios, HAND_RATIOS)
    assert_budget(ratios, EQUAL, 0.7)


def test_closed_form_and_literal_map_agree():
    u = torch.tensor([0.3, 1.7, 0.9, 2.4, 1.1, 5.0], dtype=torch.float64)
    literal = dlp_map(u, 0.6, alpha=0.1)
    closed = 0.6 + 0.2 * (u - u.mean()) / (u.max() - u.min())
    assert_close_list(literal, closed.tolist())


def test_direction_most_important_block_pruned_least():
    ratios, metric = dlp_ratios(HAND_BLOCKS, EQUAL, 0.7, statistic="median")
    importance = 1 - metric / metric.sum()
    assert int(ratios.argmin()) == int(importance.argmax()) == 0
    assert int(ratios.argmax()) == int(metric.argmax()) == 3
    assert torch.equal(torch.argsort(ratios), torch.argsort(metric))


def test_span_is_two_alpha():
    ratios, _ = dlp_ratios(HAND_BLOCKS, EQUAL, 0.7, alpha=0.15, statistic="median")
    assert float(ratios.max() - ratios.min()) == pytest.approx(0.3, abs=1e-12)


def test_unequal_sizes_shift_by_hand():
    # Weighted mean of [0.58, 0.64, 0.70, 0.88] with sizes [1, 1, 2, 4] is 6.14 / 8 = 0.7675,
    # so one additive shift of -0.0675 restores the parameter-weighted budget.
    sizes = torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    ratios, _ = dlp_ratios(HAND_BLOCKS, sizes, 0.7, statistic="median")
    assert_close_list(ratios, [0.5125, 0.5725, 0.6325, 0.8125], tol=1e-9)
    assert_budget(ratios, sizes, 0.7)


def test_large_alpha_clips_and_rebalances_by_hand():
    # alpha = 0.4: raw R = 0.7 + 0.8 * (U - 3) / 5 = [0.38, 0.54, 0.70, 1.18]; the last is
    # clipped to 0.99 and the other three shift by t with 1.62 + 3t + 0.99 = 2.8 -> t = 0.19/3.
    ratios, _ = dlp_ratios(HAND_BLOCKS, EQUAL, 0.7, alpha=0.4, statistic="median")
    shift = 0.19 / 3
    assert_close_list(ratios, [0.38 + shift, 0.54 + shift, 0.70 + shift, 0.99], tol=1e-9)
    assert_budget(ratios, EQUAL, 0.7)


def test_equal_statistics_give_uniform():
    blocks = [[t([[2.0, 2.0, 2.0]])], [t([[1.0, 2.0, 3.0]])]]
    ratios, metric = dlp_ratios(blocks, torch.ones(2), 0.7, statistic="median")
    assert_close_list(metric, [2.0, 2.0])
    assert_close_list(ratios, [0.7, 0.7])


def test_scale_invariance():
    scaled = [[m * 37.5 for m in block] for block in HAND_BLOCKS]
    ratios, _ = dlp_ratios(scaled, EQUAL, 0.7, statistic="median")
    assert_close_list(ratios, HAND_RATIOS)


def test_precomputed_metric_and_errors():
    ratios, metric = dlp_ratios(None, EQUAL, 0.7, metric=HAND_U)
    assert_close_list(ratios, HAND_RATIOS)
    with pytest.raises(ValueError):
        dlp_ratios(HAND_BLOCKS[:3], EQUAL, 0.7)
    with pytest.raises(ValueError):
        dlp_metric(HAND_BLOCKS, statistic="mode")
    with pytest.raises(ValueError):
        dlp_ratios(HAND_BLOCKS, EQUAL, 0.7, alpha=-0.1, statistic="median")


def test_real_model_at_70_percent(calibrated):
    n_blocks = len(calibrated.blocks)
    scores = [calibrated.block_scores(i) for i in range(n_blocks)]
    ratios, metric = dlp_ratios(scores, calibrated.sizes, 0.7)
    assert ratios.numel() == n_blocks == 30
    assert_budget(ratios, calibrated.sizes, 0.7)
    assert float(ratios.max() - ratios.min()) > 0.05
    assert float(ratios.max() - ratios.min()) <= 0.3 + 1e-9
    assert torch.equal(torch.argsort(ratios, stable=True), torch.argsort(metric, stable=True))

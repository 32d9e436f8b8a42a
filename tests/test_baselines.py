"""Baseline allocations on tiny synthetic blocks, checked against hand counts."""

import math
import statistics

import pytest
import torch

from dsa.allocation.baselines import (
    alphapruning_ratios,
    er_ratios,
    global_ratios,
    lamp_ratios,
    lamp_scores,
    owl_ratios,
    uniform_ratios,
)
from dsa.allocation.ratios import weighted_mean

# Unequal blocks: different matrix counts and shapes per block.
RANDOM_SHAPES = [
    [(8, 12), (12, 8)],
    [(16, 8), (4, 8)],
    [(10, 10)],
    [(6, 20), (20, 6), (5, 5)],
]


def sizes_of(shapes):
    return torch.tensor([sum(r * c for r, c in block) for block in shapes], dtype=torch.float64)


def random_blocks(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(r, c, generator=generator) for r, c in block] for block in shapes]


def assert_valid(ratios, sizes, sparsity, tol=1e-6):
    assert abs(weighted_mean(ratios, sizes) - sparsity) <= tol
    assert bool((ratios >= 0).all()) and bool((ratios < 1).all())


def assert_close_list(actual, expected, tol=1e-12):
    assert actual.tolist() == pytest.approx(expected, abs=tol)


# ---- every method meets the budget ---------------------------------------------------------

def all_methods(shapes, weights, sparsity):
    sizes = sizes_of(shapes)
    scores = [[w.abs() for w in block] for block in weights]
    return sizes, {
        "uniform": uniform_ratios(sizes, sparsity),
        "owl": owl_ratios(scores, sizes, sparsity)[0],
        "alphapruning": alphapruning_ratios(weights, sizes, sparsity)[0],
        "er": er_ratios(shapes, sizes, sparsity)[0],
        "global": global_ratios(scores, sizes, sparsity)[0],
        "lamp": lamp_ratios(weights, sizes, sparsity)[0],
    }


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.9])
def test_every_method_meets_budget_on_unequal_blocks(sparsity):
    weights = random_blocks(RANDOM_SHAPES)
    sizes, results = all_methods(RANDOM_SHAPES, weights, sparsity)
    for name, ratios in results.items():
        assert ratios.shape == (len(RANDOM_SHAPES),), name
        assert_valid(ratios, sizes, sparsity)


# ---- OWL ------------------------------------------------------------------------------------

def block_with_outliers(count):
    """Two 4x4 score matrices of ones with ``count`` entries of 100 in the first."""
    first = torch.ones(4, 4)
    first.view(-1)[:count] = 100.0
    return [first, torch.ones(4, 4)]


def test_owl_matches_hand_count():
    # 32 scores per block. 0 outliers: all equal to the mean. 1 outlier: mean 131/32 ~ 4.1,
    # 100 > 5*4.1 -> 1/32. 2 outliers: mean 230/32 ~ 7.2, 100 > 36 -> 2/32.
    blocks = [block_with_outliers(0), block_with_outliers(1), block_with_outliers(2)]
    sizes = torch.full((3,), 32.0, dtype=torch.float64)
    ratios, metric = owl_ratios(blocks, sizes, 0.7, m=5.0, lam=0.08)
    assert_close_list(metric, [0.0, 1 / 32, 2 / 32])
    # minmax [0, .5, 1] * .16 = [0, .08, .16], mean .08 -> density [.22, .30, .38].
    assert_close_list(ratios, [0.78, 0.70, 0.62])


# ---- AlphaPruning ---------------------------------------------------------------------------

def test_alphapruning_with_cached_alphas_matches_hand_computation():
    # alphas [2,4,3] -> minmax [0,1,.5] -> r = .8 + .4x = [.8, 1.2, 1.0], mean 1,
    # c = .5 -> [.4, .6, .5].
    sizes = torch.ones(3, dtype=torch.float64)
    ratios, metric = alphapruning_ratios(None, sizes, 0.5, eps=0.2, alphas=[2.0, 4.0, 3.0])
    assert metric.tolist() == [2.0, 4.0, 3.0]
    assert_close_list(ratios, [0.4, 0.6, 0.5])


def test_alphapruning_through_block_alpha_meets_budget():
    shapes = [[(32, 24), (24, 32)], [(40, 16)], [(24, 24), (16, 24)]]
    sizes = sizes_of(shapes)
    ratios, metric = alphapruning_ratios(random_blocks(shapes, seed=3), sizes, 0.6, eps=0.3)
    assert metric.shape == (3,)
    assert_valid(ratios, sizes, 0.6)


def test_alphapruning_rejects_wrong_alpha_count():
    with pytest.raises(ValueError):
        alphapruning_ratios(None, torch.ones(3), 0.5, alphas=[1.0, 2.0])


# ---- Erdos-Renyi ----------------------------------------------------------------------------

ER_SHAPES = [[(4, 4)], [(16, 16)], [(2, 64)]]  # small, large square, thin


def test_er_matches_hand_computation():
    # scores (r+c)/(rc) = [8/16, 32/256, 66/128]; sizes [16, 256, 128], total 400.
    # S .5: kept 200 = k * sum(r+c) = k * 106 -> density = score * 200/106.
    sizes = sizes_of(ER_SHAPES)
    ratios, metric = er_ratios(ER_SHAPES, sizes, 0.5)
    assert_close_list(metric, [0.5, 0.125, 66 / 128])
    assert_close_list(ratios, [6 / 106, 81 / 106, 2.875 / 106])


def test_er_saturates_dense_blocks_like_erk():
    # S .2: kept 320, k = 320/106 would make blocks 0 and 2 denser than 1 -> both dense,
    # the remaining 320 - 16 - 128 = 176 go to block 1: density 176/256 = .6875.
    sizes = sizes_of(ER_SHAPES)
    ratios, _ = er_ratios(ER_SHAPES, sizes, 0.2)
    assert_close_list(ratios, [0.0, 0.3125, 0.0])


def test_er_prunes_small_and_thin_blocks_less():
    ratios, _ = er_ratios(ER_SHAPES, sizes_of(ER_SHAPES), 0.7)
    assert ratios[0] < ratios[1] and ratios[2] < ratios[1]


# ---- global threshold -----------------------------------------------------------------------

def test_global_matches_hand_count():
    # Scores 1..12 split over two blocks; S .5 prunes 1..6.
    blocks = [
        [torch.tensor([[1.0, 5.0], [9.0, 2.0]]), torch.tensor([[6.0, 10.0]])],  # 1,2,5,6 pruned
        [torch.tensor([[3.0, 4.0], [7.0, 8.0]]), torch.tensor([[11.0, 12.0]])],  # 3,4 pruned
    ]
    sizes = torch.tensor([6.0, 6.0], dtype=torch.float64)
    ratios, metric = global_ratios(blocks, sizes, 0.5)
    assert_close_list(metric, [4 / 6, 2 / 6])
    assert_close_list(ratios, [4 / 6, 2 / 6])


def test_global_ties_are_rebalanced():
    # All scores tie: every one sits at the threshold, raw fractions are 1.
    blocks = [[torch.ones(3, 3)], [torch.ones(2, 5)]]
    sizes = torch.tensor([9.0, 10.0], dtype=torch.float64)
    ratios, metric = global_ratios(blocks, sizes, 0.5)
    assert metric.tolist() == [1.0, 1.0]
    assert_close_list(ratios, [0.5, 0.5])


def test_global_subsampled_threshold_still_meets_budget():
    weights = random_blocks(RANDOM_SHAPES, seed=1)
    scores = [[w.abs() for w in block] for block in weights]
    sizes = sizes_of(RANDOM_SHAPES)
    exact, _ = global_ratios(scores, sizes, 0.6)
    sampled, _ = global_ratios(scores, sizes, 0.6, max_exact=300)
    assert_valid(sampled, sizes, 0.6)
    assert (sampled - exact).abs().max() < 0.15


# ---- LAMP -----------------------------------------------------------------------------------

def test_lamp_scores_by_hand():
    # squared sorted [1,1,1,1], suffix sums [4,3,2,1] -> [1/4, 1/3, 1/2, 1].
    assert_close_list(lamp_scores(torch.ones(2, 2)), [0.25, 1 / 3, 0.5, 1.0], tol=1e-7)
    assert lamp_scores(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_lamp_matches_hand_count():
    # Block 0 [1,2]: scores [1/5, 1]; block 1 [1,1,1,1]: [1/4, 1/3, 1/2, 1].
    # S 1/3 of 6 prunes 2: thresholds at 1/4 -> block 0 loses 1 of 2, block 1 loses 1 of 4.
    blocks = [[torch.tensor([[2.0, 1.0]])], [torch.ones(2, 2)]]
    sizes = torch.tensor([2.0, 4.0], dtype=torch.float64)
    ratios, metric = lamp_ratios(blocks, sizes, 1 / 3)
    assert_close_list(metric, [0.5, 0.25])
    assert_close_list(ratios, [0.5, 0.25])


def test_atp_is_an_arithmetic_progression_meeting_the_budget():
    from dsa.allocation.baselines import atp_grid, atp_legal_step, atp_ratios

    sizes = torch.full((5,), 3.0)
    ratios, depth = atp_ratios(sizes, 0.6, 0.05)
    # By hand: first term 0.6 - 0.05 * 4 / 2 = 0.5, then +0.05 per block.
    assert ratios.tolist() == pytest.approx([0.5, 0.55, 0.6, 0.65, 0.7], abs=1e-12)
    assert depth.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert weighted_mean(ratios, sizes) == pytest.approx(0.6, abs=1e-12)
    assert atp_legal_step(5, 0.6) == pytest.approx(0.2)  # min(1.2, 0.8) / 4
    with pytest.raises(ValueError):
        atp_ratios(sizes, 0.6, 0.21)
    # The grid: steps 2 * lam / (L - 1), illegal ones dropped (lam 0.3 > 1 - 0.8 at 80 %).
    assert atp_grid(5, 0.8, (0.1, 0.2, 0.3)) == [(0.1, pytest.approx(0.05)), (0.2, pytest.approx(0.1))]


def test_dsa_published_function_by_hand():
    """W:(ABSLOG)-(VAR)-(ATAN,ASIN) with DSA's map, on three tiny blocks, computed step by step."""
    from dsa.allocation.baselines import dsa_published_ratios

    blocks = [[torch.tensor([[1.0, math.e]]), torch.tensor([[0.0]])],   # ln: 0, 1, (0 -> 1 -> ln 1 =) 0
              [torch.tensor([[math.e ** 2, 1.0, 1.0]])],               # ln: 2, 0, 0
              [torch.tensor([[math.e ** 4, 1.0]])]]                    # ln: 4, 0
    variances = [statistics.variance([0, 1, 0]), statistics.variance([2, 0, 0]), statistics.variance([4, 0])]
    atans = [math.atan(v) for v in variances]                          # 0.322, 0.927, 1.446
    importance = [math.asin(a) if abs(a) <= 1 else 0.0 for a in atans]  # asin(1.446) is NaN -> 0
    scaled = [(v - min(importance)) / (max(importance) - min(importance)) for v in importance]
    lam, sparsity = 0.08, 0.7
    expected = [sparsity + 2 * lam * (x - sum(scaled) / 3) for x in scaled]  # larger -> more pruning
    ratios, metric = dsa_published_ratios(blocks, torch.ones(3), sparsity, lam)
    # The scores are float32, and float32 ln(e) differs by 1 ulp between CPUs' vector paths.
    assert metric.tolist() == pytest.approx(importance, abs=1e-6)
    assert ratios.tolist() == pytest.approx(expected, abs=1e-6)
    assert ratios[1] == ratios.max()

"""Ratio maps and the budget rebalancer, checked against numbers worked out by hand."""

import math

import pytest
import torch

from dsa.allocation.ratios import (alpha_map, dsa_map, owl_map, rebalance, sanitize, sanitize_dsa, uniform,
                                   weighted_mean)
from dsa.core.guards import MOVED_GUARDS

EQUAL4 = torch.ones(4, dtype=torch.float64)


def assert_on_budget(ratios, sizes, sparsity, max_ratio=0.99, tol=1e-9):
    sizes = torch.as_tensor(sizes, dtype=torch.float64)
    assert ratios.dtype == torch.float64
    assert abs(weighted_mean(ratios, sizes) - sparsity) <= tol
    assert bool((ratios >= 0).all()) and bool((ratios <= max_ratio).all())


def assert_close_list(actual, expected, tol=1e-12):
    assert actual.tolist() == pytest.approx(expected, abs=tol)


# ---- sanitize / uniform ----------------------------------------------------------------

def test_sanitize_follows_dsa_convention():
    values = torch.tensor([math.nan, math.inf, -math.inf, 2.5])
    assert sanitize(values).tolist() == [0.0, 1e6, -1e6, 2.5]
    assert sanitize(values, MOVED_GUARDS).tolist() == [1.0, 1e5, -1e5, 2.5]  # the guard check's fills


def test_uniform_is_the_global_sparsity_everywhere():
    assert uniform(torch.tensor([3.0, 5.0, 7.0]), 0.6).tolist() == [0.6, 0.6, 0.6]


# ---- rebalance --------------------------------------------------------------------------

def test_rebalance_returns_valid_input_bit_exact():
    ratios = torch.tensor([0.6, 0.8, 0.7], dtype=torch.float64)
    out = rebalance(ratios, torch.ones(3), 0.7)
    assert torch.equal(out, ratios)


def test_rebalance_shifts_off_budget_vector():
    # [0.5, 0.6] averages 0.55; one shift of +0.15 reaches 0.7 without clipping.
    out = rebalance(torch.tensor([0.5, 0.6], dtype=torch.float64), torch.ones(2), 0.7)
    assert_close_list(out, [0.65, 0.75])
    assert_on_budget(out, torch.ones(2), 0.7)


def test_rebalance_clips_and_redistributes():
    # 1.2 clips to 0.99 and -0.1 to 0; middle blocks absorb the remaining budget equally.
    ratios = torch.tensor([1.2, 0.5, 0.5, -0.1])
    out = rebalance(ratios, EQUAL4, 0.5)
    # budget 2.0 = 0.99 + 0 + 2x  ->  x = 0.505 (the shift is +0.005)
    assert_close_list(out, [0.99, 0.505, 0.505, 0.0])
    assert_on_budget(out, EQUAL4, 0.5)


def test_rebalance_keeps_weighted_budget_for_unequal_sizes():
    sizes = torch.tensor([1.0e6, 3.0e8, 5.5e7, 1.0e3])
    ratios = torch.tensor([0.95, 0.2, 1.4, 0.3])
    out = rebalance(ratios, sizes, 0.45)
    assert_on_budget(out, sizes, 0.45)


@pytest.mark.parametrize("sparsity", [0.995, 1.0, -0.1])
def test_rebalance_rejects_impossible_budget(sparsity):
    with pytest.raises(ValueError):
        rebalance(torch.tensor([0.5, 0.5]), torch.ones(2), sparsity)


def test_rebalance_rejects_non_finite_ratios():
    with pytest.raises(ValueError):
        rebalance(torch.tensor([math.nan, 0.5]), torch.ones(2), 0.5)


# ---- owl_map ----------------------------------------------------------------------------

def test_owl_map_matches_hand_computation():
    # values [1,3,2,5] -> minmax [0, .5, .25, 1] -> d = x*0.16 = [0, .08, .04, .16],
    # mean(d) = .07 -> density = d - .07 + .3 = [.23, .31, .27, .39] -> ratio = 1 - density.
    out = owl_map(torch.tensor([1.0, 3.0, 2.0, 5.0]), EQUAL4, 0.7, lam=0.08)
    assert_close_list(out, [0.77, 0.69, 0.73, 0.61])
    assert_on_budget(out, EQUAL4, 0.7)


def test_owl_map_uses_parameter_weighted_mean():
    # values [0,1], sizes [3,1], lam .1, S .5: d = [0, .2], weighted mean(d) = .05,
    # density = [.45, .65] -> ratio = [.55, .35]; 3*.55 + .35 = 2 = .5 * 4.
    sizes = torch.tensor([3.0, 1.0])
    out = owl_map(torch.tensor([0.0, 1.0]), sizes, 0.5, lam=0.1)
    assert_close_list(out, [0.55, 0.35])
    assert_on_budget(out, sizes, 0.5)


def test_owl_map_larger_value_prunes_less():
    out = owl_map(torch.tensor([0.2, 0.9, 0.5]), torch.ones(3), 0.6, lam=0.05)
    assert out[1] < out[2] < out[0]


# ---- alpha_map --------------------------------------------------------------------------

def test_alpha_map_matches_hand_computation():
    # values [1,3,2,5] -> minmax [0, .5, .25, 1] -> r = .7 + .6x = [.7, 1, .85, 1.3],
    # sum r = 3.85, c = .7*4/3.85 = 8/11 -> ratio = c*r.
    out = alpha_map(torch.tensor([1.0, 3.0, 2.0, 5.0]), EQUAL4, 0.7, eps=0.3)
    assert_close_list(out, [5.6 / 11, 8 / 11, 6.8 / 11, 10.4 / 11])
    assert_on_budget(out, EQUAL4, 0.7)


def test_alpha_map_overshoot_is_clipped_and_rebalanced():
    # S .6, eps .8, values [0,0,0,1]: r = [.2,.2,.2,1.8], c = 2.4/2.4 = 1 -> 1.8 clips to .99;
    # the missing .81 goes equally to the other three: .2 + .27 = .47.
    out = alpha_map(torch.tensor([0.0, 0.0, 0.0, 1.0]), EQUAL4, 0.6, eps=0.8)
    assert_close_list(out, [0.47, 0.47, 0.47, 0.99])
    assert_on_budget(out, EQUAL4, 0.6)


def test_alpha_map_small_sparsity_large_eps_overshoots_past_one():
    # S .9, eps .5, values [0,1]: r = [.5, 1.5], c = .9 -> [.45, 1.35]; clip .99, other .81.
    out = alpha_map(torch.tensor([0.0, 1.0]), torch.ones(2), 0.9, eps=0.5)
    assert_close_list(out, [0.81, 0.99])


def test_alpha_map_unequal_sizes_keep_weighted_budget():
    sizes = torch.tensor([10.0, 1000.0, 50.0, 7.0])
    out = alpha_map(torch.tensor([2.1, 3.7, 5.0, 4.4]), sizes, 0.7, eps=0.3)
    assert_on_budget(out, sizes, 0.7)
    assert out[0] < out[1] < out[3] < out[2]  # larger alpha -> more pruning


# ---- dsa_map (DSA's lib/prune_all.py:2073-2088) ------------------------------------------

def test_sanitize_dsa_follows_dsa_code():
    # lib/autolayer.py:455-458: nan -> 0, +-inf -> -1
    values = torch.tensor([math.nan, math.inf, -math.inf, 2.5])
    assert sanitize_dsa(values).tolist() == [0.0, -1.0, -1.0, 2.5]
    assert sanitize_dsa(values, MOVED_GUARDS).tolist() == [1.0, -2.0, -2.0, 2.5]  # the guard check's fills


def test_dsa_map_matches_hand_computation():
    # values [1, 2, 4] -> minmax [0, 1/3, 1] -> 1 - x = [1, 2/3, 0] (already in [0, 1]: the
    # second minmax is the identity) -> d = x * 0.16 = [.16, .32/3, 0], mean(d) = .8/9
    # -> density = d - mean(d) + .3 -> ratio = 1 - density = .7 + .16 * ([0, 1/3, 1] - 4/9).
    out = dsa_map(torch.tensor([1.0, 2.0, 4.0]), torch.ones(3), 0.7, lam=0.08)
    assert_close_list(out, [0.7 - 0.64 / 9, 0.7 - 0.16 / 9, 0.7 + 0.8 / 9])
    assert_on_budget(out, torch.ones(3), 0.7)


def test_dsa_map_is_owl_map_reversed():
    values = torch.tensor([0.2, 0.9, 0.5, 0.1])
    dsa, owl = dsa_map(values, EQUAL4, 0.6, lam=0.05), owl_map(values, EQUAL4, 0.6, lam=0.05)
    assert dsa[3] < dsa[0] < dsa[2] < dsa[1]  # larger importance -> MORE pruning
    assert owl[3] > owl[0] > owl[2] > owl[1]
    assert_close_list(dsa - 0.6, (-(owl - 0.6)).tolist())
    assert_close_list(dsa, owl_map(-values, EQUAL4, 0.6, lam=0.05).tolist())


def test_dsa_map_unequal_sizes_keep_weighted_budget():
    sizes = torch.tensor([10.0, 1000.0, 50.0, 7.0])
    out = dsa_map(torch.tensor([2.1, 3.7, 5.0, 4.4]), sizes, 0.7, lam=0.1)
    assert_on_budget(out, sizes, 0.7)
    assert out[0] < out[1] < out[3] < out[2]
    assert float(out.max() - out.min()) == pytest.approx(0.2)  # spans 2 * lambda


# ---- degenerate inputs ------------------------------------------------------------------

@pytest.mark.parametrize("mapping, strength", [(owl_map, 0.08), (alpha_map, 0.3), (dsa_map, 0.08)])
@pytest.mark.parametrize("values", [
    [2.0, 2.0, 2.0, 2.0],
    [math.nan, math.nan, math.nan, math.nan],
    [math.inf, math.inf, math.inf, math.inf],
])
def test_degenerate_values_give_uniform(mapping, strength, values):
    out = mapping(torch.tensor(values), EQUAL4, 0.7, strength)
    assert out.tolist() == pytest.approx([0.7] * 4, abs=1e-12)


@pytest.mark.parametrize("mapping, strength", [(owl_map, 0.08), (alpha_map, 0.3), (dsa_map, 0.08)])
def test_infinite_value_is_ranked_via_sentinel(mapping, strength):
    out = mapping(torch.tensor([1.0, math.inf, math.nan, -math.inf]), EQUAL4, 0.7, strength)
    assert_on_budget(out, EQUAL4, 0.7)

"""DSA's own ops, map, published function and the depth operand, against DSA's code
(lliai/DSA, lib/autolayer.py and lib/prune_all.py) and against hand computations.

Synthetic small tensors only (no model): the whole file runs in seconds. The reference
functions below are DSA's, copied from its code (torch branches only) with file:line.
"""
import math

import numpy as np
import pytest
import sympy
import torch
from sympy.core.function import AppliedUndef

from dsa.core import numerics as metrics
from dsa.core.guards import MOVED_GUARDS
from dsa.allocation.ratios import dsa_map, owl_map
from dsa.functions.codec import DEPTH
from dsa.functions.files import (DSA_PUBLISHED, FunctionError, describe, from_root, importance_expr, same_formula,
                                 simplified_expr, to_names)
from dsa.functions.genome import (ATP_LAMBDAS, EPS_GRID, LAMBDA_GRID, SEEDS, build_pset, seed_genomes,
                                  seed_names)
from dsa.functions.pipeline import FeatureMemo, allocation_ratios, parse, prefix_values, relative_depth
from dsa.functions.replay import function_ratios
from search_space import pre, reduction, transform

PSET = build_pset(arithmetic=True)


# ---------------------------------------------------------------- DSA's code, verbatim


def dsa_ref_log(x):  # lib/autolayer.py:24-27, element_wise_log_op
    x[x <= 0] = 1
    return torch.log(x + 1e-6)


def dsa_ref_abslog(x):  # lib/autolayer.py:35-39, element_wise_abslog_op
    x[x == 0] = 1
    x = torch.abs(x)
    return torch.log(x)


def dsa_ref_normalize(x):  # lib/autolayer.py:75-81, normalize_op
    m = torch.mean(x)
    s = torch.std(x)
    C = (x - m) / s
    C[C != C] = 0
    return C


def dsa_ref_mms(x):  # lib/autolayer.py:343, "MMS"
    return (x - torch.min(x)) / (torch.max(x) - torch.min(x) + 1e-9)


def dsa_ref_special(value):  # lib/autolayer.py:448-464, the end of compute_importance
    if math.isnan(value):
        return 0.0
    elif math.isinf(value):
        return -1
    return value


def dsa_ref_ratios(all_layer_ratio, sparsity_ratio, lamda):  # lib/prune_all.py:2073-2088, 2192
    all_layer_ratio = np.array(all_layer_ratio)
    all_layer_ratio = (all_layer_ratio - all_layer_ratio.min()) / (all_layer_ratio.max() - all_layer_ratio.min())
    all_layer_ratio = [1 - item for item in all_layer_ratio]
    all_layer_ratio = np.array(all_layer_ratio)
    all_layer_ratio = (all_layer_ratio - all_layer_ratio.min()) * (
        1 / (all_layer_ratio.max() - all_layer_ratio.min()) * lamda * 2)
    all_layer_ratio = all_layer_ratio - np.mean(all_layer_ratio) + (1 - sparsity_ratio)
    return [1 - r for r in all_layer_ratio]  # layer_sparsity_ratio = 1 - all_layer_ratio[i]


def concat(mats):  # lib/prune_all.py:2060
    return torch.cat([torch.flatten(x.cpu()) for x in mats])


def block(seed, shapes=((6, 8), (8, 6), (3, 5)), sigma=1.0, zeros=2):
    """Positive 'Wanda scores' exp(sigma * N(0, 1)) with a few exact zeros."""
    g = torch.Generator().manual_seed(seed)
    mats = [torch.exp(sigma * torch.randn(*s, generator=g)) for s in shapes]
    for k in range(zeros):
        mats[k % len(mats)].view(-1)[k] = 0.0
    return mats


# ---------------------------------------------------------------- element-wise pre ops


def test_dsa_abslog_is_ln_abs_with_zero_to_zero():
    x = torch.tensor([[0.0, -2.0, 0.5], [3.0, -0.0, 1e-3]])
    want = [0.0, math.log(2.0), math.log(0.5), math.log(3.0), 0.0, math.log(1e-3)]
    assert pre.dsa_abslog(x).reshape(-1).tolist() == pytest.approx(want, rel=1e-6)
    assert torch.equal(pre.dsa_abslog(x), dsa_ref_abslog(x.clone()))  # bit for bit with DSA's
    assert x[0, 0] == 0.0  # the input is not modified (DSA's is)
    # not our abslog (|ln|x||) nor our log (0 -> ln(float32 tiny)):
    assert float(pre.abslog(x)[0, 2]) == pytest.approx(-math.log(0.5)) and float(pre.log(x)[0, 0]) < -80


def test_dsa_log_sets_non_positive_to_one_then_adds_1e_6():
    x = torch.tensor([0.0, -2.0, 0.5, 3.0, 1e-7])
    want = [math.log(1 + 1e-6), math.log(1 + 1e-6), math.log(0.5 + 1e-6), math.log(3 + 1e-6), math.log(1.1e-6)]
    assert pre.dsa_log(x).tolist() == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert torch.equal(pre.dsa_log(x), dsa_ref_log(x.clone()))
    assert x[1] == -2.0


# ---------------------------------------------------------------- block-level pre ops


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.std of one value (DSA's reference)
def test_dsa_zscore_uses_the_whole_block_and_unbiased_std():
    mats = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0]])]
    # concatenation [1, 2, 3, 4, 5]: mean 3, unbiased std sqrt(10 / 4)
    s = math.sqrt(2.5)
    out = pre.dsa_zscore(mats)
    assert [t.shape for t in out] == [(2, 2), (1, 1)] and out[0].dtype == torch.float32
    assert concat(out).tolist() == pytest.approx([(v - 3) / s for v in (1, 2, 3, 4, 5)], rel=1e-6)
    # not per matrix: the second matrix alone would be constant (zeros)
    assert float(out[1]) == pytest.approx(2 / s, rel=1e-6)
    # DSA's normalize_op on the concatenation
    torch.testing.assert_close(concat(out), dsa_ref_normalize(concat(mats)), rtol=1e-6, atol=1e-6)
    # constant block (0 / 0 -> nan -> 0) and one-element block (unbiased std nan) give zeros
    for degenerate in ([torch.full((3, 3), 2.5), torch.full((2, 1), 2.5)], [torch.tensor([[7.0]])]):
        assert all(torch.equal(t, torch.zeros_like(t)) for t in pre.dsa_zscore(degenerate))
        assert torch.equal(dsa_ref_normalize(concat(degenerate)), torch.zeros(concat(degenerate).numel()))


def test_dsa_minmax_uses_the_whole_block():
    mats = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0]])]
    out = pre.dsa_minmax(mats)
    assert concat(out).tolist() == pytest.approx([(v - 1) / (4 + 1e-9) for v in (1, 2, 3, 4, 5)], rel=1e-7)
    assert float(out[1]) == pytest.approx(1.0)  # per matrix it would be 0 (constant)
    torch.testing.assert_close(concat(out), dsa_ref_mms(concat(mats)))
    assert all(torch.equal(t, torch.zeros_like(t)) for t in pre.dsa_minmax([torch.full((2, 2), 3.0)]))


def test_block_ops_stream_without_concatenating(monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK", 7)  # many chunks per matrix
    mats = block(3, sigma=2.0)
    cat = concat(mats)
    torch.testing.assert_close(concat(pre.dsa_zscore(mats)), dsa_ref_normalize(cat.clone()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(concat(pre.dsa_minmax(mats)), dsa_ref_mms(cat.clone()), rtol=1e-6, atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(mats, block(3, sigma=2.0)))  # inputs untouched


def test_elementwise_dsa_ops_on_the_concatenation_equal_per_matrix():
    mats = block(4)
    for name, ref in (("dsa_abslog", dsa_ref_abslog), ("dsa_log", dsa_ref_log)):
        assert torch.equal(concat(pre.apply_chain([name], mats)), ref(concat(mats))), name


# ---------------------------------------------------------------- reduction, transforms


def test_var_unbiased_is_torch_var():
    mats = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0]])]
    assert reduction.var_unbiased(mats) == pytest.approx(2.5)  # sum of squares 10 / (5 - 1)
    assert reduction.var(mats) == pytest.approx(2.0)  # ours, population: 10 / 5
    mats = block(5)
    assert reduction.var_unbiased(mats) == pytest.approx(float(torch.var(concat(mats).double())), rel=1e-12)
    assert math.isnan(reduction.var_unbiased([torch.tensor([[1.0]])]))  # torch.var of one value: nan


def test_dsa_asin_acos_are_nan_outside_the_unit_interval():
    x = torch.tensor([0.5, 2.0, -1.0, -1.5], dtype=torch.float64)
    a, c = transform.dsa_asin(x), transform.dsa_acos(x)
    assert a[0] == pytest.approx(math.asin(0.5)) and a[2] == pytest.approx(-math.pi / 2)
    assert c[0] == pytest.approx(math.acos(0.5)) and c[2] == pytest.approx(math.pi)
    assert torch.isnan(a[[1, 3]]).all() and torch.isnan(c[[1, 3]]).all()
    # ours clamp instead; nan propagates through later transforms, as in DSA
    assert float(transform.asin(x)[1]) == pytest.approx(math.pi / 2)
    assert torch.isnan(transform.atan(a)[1]) and torch.isnan(transform.log(a)[1])


# ---------------------------------------------------------------- the published function


def blocks_for_published():
    """4 blocks; var(ln x) ~ sigma^2: the last one's atan(var) > 1, so DSA's asin gives nan -> 0."""
    return [block(10 + i, sigma=s) for i, s in enumerate((0.5, 0.9, 1.1, 2.0))]


def dsa_published_by_hand(blocks, sparsity, lam=0.08):
    """DSA's wanda_owl_search with W:(ABSLOG)-(VAR)-(ATAN,ASIN), step by step as its code."""
    values = []
    for mats in blocks:
        w = concat(mats)                          # prune_all.py:2060
        w = dsa_ref_abslog(w)                     # autolayer.py:437-438, the stick op
        w = torch.var(w)                          # autolayer.py:441-442, VAR = torch.var
        w = torch.asin(torch.atan(w))             # autolayer.py:444-446, ATAN then ASIN
        values.append(dsa_ref_special(w.item()))  # autolayer.py:448-464
    return dsa_ref_ratios(values, sparsity, lam), values


def test_published_function_matches_dsa_code():
    blocks = blocks_for_published()
    want, want_values = dsa_published_by_hand(blocks, 0.7)
    assert want_values[3] == 0.0 and all(v > 0 for v in want_values[:3])  # the nan -> 0 path is exercised
    ratios, values = function_ratios(DSA_PUBLISHED, lambda operand, i: blocks[i], 4, torch.ones(4), 0.7)
    assert ratios == pytest.approx(want, abs=1e-6)  # float32 (DSA) vs float64 statistics
    assert math.isnan(values[3]) and values[:3] == pytest.approx(want_values[:3], rel=1e-5)
    assert ratios[3] == min(ratios)  # importance 0 -> the least pruning
    assert sum(ratios) / 4 == pytest.approx(0.7, abs=1e-12)
    # the seed is the same genome
    assert to_names(DSA_PUBLISHED) == seed_names("dsa-published")


def test_published_seed_exact_computation():
    """The computation a baseline must mirror to equal the seed bit for bit."""
    blocks = blocks_for_published()
    names = seed_names("dsa-published")
    memo = FeatureMemo.over(lambda operand, i: blocks[i], 4)
    got = allocation_ratios(parse(names, lambda n: PSET.mapping[n].arity), memo, torch.ones(4), 0.7)
    from dsa.allocation.ratios import sanitize_dsa
    v = torch.tensor([reduction.var_unbiased([pre.dsa_abslog(m) for m in mats]) for mats in blocks],
                     dtype=torch.float64)
    v = transform.dsa_asin(transform.atan(v))
    assert torch.equal(got, dsa_map(sanitize_dsa(v), torch.ones(4), 0.7, 0.08))


def test_dsa_map_direction_in_the_pipeline():
    """map_dsa: larger importance -> more pruning; map_owl the opposite, same importance."""
    blocks = [block(20 + i) for i in range(3)]
    mean = [float(concat(m).double().mean()) for m in blocks]
    document = {"format": "dsa-function", "version": 1,
                "importance": {"operand": "wanda", "pre": [], "reduction": "mean"},
                "transform": [], "post": "noop", "map": {"kind": "dsa", "lambda": 0.1}}
    dsa, _ = function_ratios(document, lambda operand, i: blocks[i], 3, torch.ones(3), 0.5)
    owl, _ = function_ratios({**document, "map": {"kind": "owl", "lambda": 0.1}}, lambda o, i: blocks[i], 3,
                             torch.ones(3), 0.5)
    order = np.argsort(mean)
    assert list(np.argsort(dsa)) == list(order) and list(np.argsort(owl)) == list(order[::-1])
    mean = torch.tensor(mean, dtype=torch.float64)
    assert dsa == pytest.approx(dsa_map(mean, torch.ones(3), 0.5, 0.1).tolist(), abs=1e-12)
    assert owl == pytest.approx(owl_map(mean, torch.ones(3), 0.5, 0.1).tolist(), abs=1e-12)


def test_map_dsa_uses_dsas_sanitiser():
    """map_dsa sanitises as DSA (nan -> 0, -inf -> -1), the other maps as before (-inf -> -1e6)."""
    document = {"format": "dsa-function", "version": 1,
                "importance": {"operand": "wanda", "pre": [], "reduction": "mean"},
                "transform": ["dsa_acos"], "post": "noop", "map": {"kind": "dsa", "lambda": 0.1}}
    blocks = [[torch.tensor([[v]])] for v in (0.5, 2.0, 0.0)]
    # acos([.5, 2, 0]) = [pi/3, nan, pi/2] -> DSA: [pi/3, 0, pi/2]
    ratios, values = function_ratios(document, lambda o, i: blocks[i], 3, torch.ones(3), 0.5)
    assert math.isnan(values[1]) and ratios[1] < ratios[0] < ratios[2]
    assert ratios == pytest.approx(dsa_ref_ratios([math.pi / 3, 0.0, math.pi / 2], 0.5, 0.1), abs=1e-12)
    # logdet of a singular matrix is -inf: DSA's -1, next to ln(1/2) and ln(2)
    blocks = [[torch.eye(2)], [2 * torch.eye(2)], [torch.zeros(2, 2)]]
    document = {**document, "importance": {"operand": "weight", "pre": [], "reduction": "logdet"}, "transform": []}
    ratios, values = function_ratios(document, lambda o, i: blocks[i], 3, torch.ones(3), 0.5)
    assert values[2] == -math.inf
    assert ratios == pytest.approx(dsa_ref_ratios([math.log(0.5), math.log(2.0), -1.0], 0.5, 0.1), abs=1e-12)
    owl, _ = function_ratios({**document, "map": {"kind": "owl", "lambda": 0.1}}, lambda o, i: blocks[i], 3,
                             torch.ones(3), 0.5)
    assert owl[0] - owl[1] == pytest.approx(0.2 * (2 * math.log(2)) / (1e6 + math.log(2)), abs=1e-15)  # squashed


# ---------------------------------------------------------------- depth: ATP


def no_matrices(operand, index):
    raise AssertionError(f"block_mats called for {operand}: depth must be made by the interpreter")


@pytest.mark.parametrize("lam", ATP_LAMBDAS)
def test_atp_seed_is_an_arithmetic_progression(lam):
    n, sparsity = 7, 0.6
    memo = FeatureMemo.over(no_matrices, n)
    root = parse(seed_names("atp", lam), lambda name: PSET.mapping[name].arity)
    ratios = allocation_ratios(root, memo, torch.ones(n), sparsity)
    steps = ratios[1:] - ratios[:-1]
    assert torch.allclose(steps, torch.full_like(steps, 2 * lam / (n - 1)), rtol=0, atol=1e-12)
    assert float(ratios.mean()) == pytest.approx(sparsity, abs=1e-12)
    assert float(ratios[0]) == pytest.approx(sparsity - lam, abs=1e-12)  # rises with depth
    assert seed_names(f"atp@{lam:g}") == seed_names("atp", lam)


def test_atp_unequal_sizes_keep_the_progression_and_the_weighted_budget():
    sizes = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    root = parse(seed_names("atp", 0.1), lambda name: PSET.mapping[name].arity)
    ratios = allocation_ratios(root, FeatureMemo.over(no_matrices, 5), sizes, 0.7)
    steps = ratios[1:] - ratios[:-1]
    assert torch.allclose(steps, torch.full_like(steps, 0.05), rtol=0, atol=1e-12)
    assert float((ratios * sizes).sum() / sizes.sum()) == pytest.approx(0.7, abs=1e-12)


def test_depth_flows_through_pre_ops_and_reductions():
    n = 5
    node = parse(["red_mean", "pre2_square", "pre1_noop", DEPTH], lambda name: PSET.mapping[name].arity)
    assert prefix_values(node, no_matrices, n) == [(i / 4) ** 2 for i in range(n)]  # float64: exact
    node = parse(["red_mean", "pre2_noop", "pre1_noop", DEPTH], lambda name: PSET.mapping[name].arity)
    assert prefix_values(node, no_matrices, n) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert prefix_values(node, no_matrices, 1) == [0.0]  # one block: depth 0
    assert relative_depth(0, 1) == 0.0 and relative_depth(3, 4) == 1.0
    # The guard check moves depth's ends inward (MOVED_GUARDS.depth_inset = 1e-4): [1e-4, 1 - 1e-4], affinely.
    moved = prefix_values(node, no_matrices, n, MOVED_GUARDS)
    assert moved == pytest.approx([1e-4 + (1 - 2e-4) * i / 4 for i in range(n)], rel=0, abs=1e-15)
    assert (moved[0], moved[2], moved[4]) == pytest.approx((1e-4, 0.5, 1 - 1e-4), rel=0, abs=1e-15)
    for red in reduction.OPS:  # every reduction accepts a depth block without raising
        node = parse([f"red_{red}", "pre2_dsa_zscore", "pre1_dsa_log", DEPTH], lambda name: PSET.mapping[name].arity)
        assert all(isinstance(v, float) for v in prefix_values(node, no_matrices, 3)), red
    # one-block model through a whole function: the uniform allocation
    root = parse(seed_names("atp", 0.2), lambda name: PSET.mapping[name].arity)
    assert allocation_ratios(root, FeatureMemo.over(no_matrices, 1), torch.ones(1), 0.7).tolist() == [0.7]


def test_dlp_seed_is_dlps_formula():
    """DLP's public code: R = S + 2 alpha (U - mean U) / (max U - min U), U = mean Wanda score."""
    blocks = [block(30 + i, sigma=0.3 * (i + 1)) for i in range(4)]
    u = np.array([float(concat(m).double().mean()) for m in blocks])
    want = 0.7 + 2 * 0.15 * (u - u.mean()) / (u.max() - u.min())
    root = parse(seed_names("dlp"), lambda name: PSET.mapping[name].arity)
    got = allocation_ratios(root, FeatureMemo.over(lambda o, i: blocks[i], 4), torch.ones(4), 0.7)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-12)


# ---------------------------------------------------------------- seeds and files


def test_seed_labels_and_constants():
    genomes = seed_genomes()
    assert list(genomes) == list(SEEDS) == ["uniform", "owl", "alphapruning", "dsa-published", "dlp",
                                            *(f"atp@{lam:g}" for lam in ATP_LAMBDAS)]
    assert all(seed_names(label) == names for label, names in genomes.items())
    assert seed_names("alphapruning", eps=0.3)[-1] == "eps_0p3" and seed_names("alphapruning")[-1] == "eps_0p2"
    assert seed_genomes(alpha_eps=0.3)["alphapruning"][-1] == "eps_0p3"
    assert 0.2 in EPS_GRID and 0.3 in EPS_GRID and set(ATP_LAMBDAS) <= set(LAMBDA_GRID) and 0.15 in LAMBDA_GRID
    assert seed_names("dlp")[-1] == "lam_0p15" and seed_names("dsa-published")[-1] == "lam_0p08"
    for bad in (lambda: seed_names("atp"), lambda: seed_names("atp", 0.123),
                lambda: seed_names("alphapruning", eps=0.25),
                lambda: seed_names("owl@0.1"), lambda: seed_names("nope")):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.parametrize("label", list(SEEDS))
def test_seed_function_files_round_trip(label):
    names = seed_names(label)
    document = from_root(parse(names, lambda name: PSET.mapping[name].arity))
    assert to_names(document) == names


def test_function_files_with_map_dsa_and_depth_round_trip():
    document = {"format": "dsa-function", "version": 1,
                "importance": {"op": "sub", "args": [{"operand": DEPTH, "pre": ["dsa_log"], "reduction": "mean"},
                                                     {"operand": "wanda", "pre": ["dsa_zscore", "dsa_minmax"],
                                                      "reduction": "var_unbiased"}]},
                "transform": ["dsa_acos"], "post": "noop", "map": {"kind": "dsa", "lambda": 0.15}}
    names = to_names(document)
    assert names[0] == "map_dsa" and DEPTH in names and names[-1] == "lam_0p15"
    assert from_root(parse(names, lambda name: PSET.mapping[name].arity)) == document
    assert from_root(parse(to_names(DSA_PUBLISHED), lambda name: PSET.mapping[name].arity)) == DSA_PUBLISHED
    assert "d" in {str(s) for s in importance_expr(document).free_symbols}
    text = describe(document)
    assert "DSA map" in text and "MORE pruning" in text and "relative depth" in text
    # printed formulas parse back unchanged (apply.py show), Piecewise twins included
    x = sympy.Symbol("x")
    undefined = {f.func.__name__ for registry in (pre.OPS, reduction.OPS, transform.OPS)
                 for op in registry.values() for f in sympy.sympify(op.sym(x)).atoms(AppliedUndef)}
    for doc in (document, DSA_PUBLISHED):
        expr = importance_expr(doc)
        assert sympy.parse_expr(str(expr), local_dict={n: sympy.Function(n) for n in undefined}) == expr
    # simplification never moves DSA's Piecewise out of the reduction over elements
    want = "asin(atan(var_unbiased(Piecewise((0, Eq(x, 0)), (log(Abs(x)), True)))))"
    assert str(simplified_expr(DSA_PUBLISHED)) == want
    floored = {**DSA_PUBLISHED, "importance": {**DSA_PUBLISHED["importance"], "pre": ["log"]}}
    same, _ = same_formula(floored, DSA_PUBLISHED)
    assert not same  # ln|x| with 0 -> 0 is not ln|x| floored at ln(tiny)
    for mapping, reason in (({"kind": "dsa", "eps": 0.2}, "map must be"),
                            ({"kind": "dsa", "lambda": 0.51}, "outside"),
                            ({"kind": "alpha", "lambda": 0.2}, "map must be")):
        with pytest.raises(FunctionError, match=reason):
            to_names({**document, "map": mapping})

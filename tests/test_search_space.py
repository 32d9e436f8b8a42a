"""search_space: the four op registries, their sympy twins and the spectral helpers.

Synthetic small tensors only (no model): the whole file runs in a few seconds.
"""
import dataclasses
import math

import numpy as np
import pytest
import sympy
import torch
from sympy.core.function import AppliedUndef

from search_space import post, pre, reduction, transform
from search_space.op import Op
from dsa.core import numerics as metrics
from dsa.core.guards import DEFAULT_GUARDS, MOVED_GUARDS, Guards
from dsa.core.numerics import block_alpha, esd, hill_alpha, hill_at, outlier_fraction

X = sympy.Symbol("x")

# DSA's op lists (the paper's search space), in its order (x^2 -> square, abs-log -> abslog,
# L1/L2 -> l1/l2, log-determinant -> logdet, correlation -> corr; alpha_* and outlier are
# AlphaPruning's and OWL's block metrics), then DSA's ops as its code defines them (dsa_*,
# var_unbiased: tests/test_dsa_fidelity.py).
NAMES = {
    pre: "noop abs square exp sigmoid tanh log abslog zscore minmax dsa_abslog dsa_log dsa_zscore dsa_minmax",
    reduction: "mean var std l1 l2 geomean entropy rank logdet corr alpha_peak alpha_mid outlier var_unbiased",
    transform: "noop sin cos tan asin acos atan exp log abs sigmoid tanh softplus sqrt dsa_asin dsa_acos",
    post: "noop sigmoid log tanh softmax rank",
}


@pytest.mark.parametrize("mod", list(NAMES), ids=lambda m: m.__name__.split(".")[-1])
def test_registry_names(mod):
    assert list(mod.OPS) == NAMES[mod].split()
    for name, op in mod.OPS.items():
        assert isinstance(op, Op) and op.name == name


def test_reduction_kinds_partition_the_registry():
    assert reduction.ELEMENTWISE | reduction.MATRIX == set(reduction.OPS)
    assert not reduction.ELEMENTWISE & reduction.MATRIX


# ---------------------------------------------------------------- spectra / Hill


def test_esd_equals_eigvalsh_of_gram():
    w = torch.randn(12, 20, generator=torch.Generator().manual_seed(0))
    e = esd(w)
    assert e.dtype == torch.float64 and e.shape == (12,)
    assert torch.all(e[1:] >= e[:-1])
    # W^T W is 20 x 20 of rank 12: its 12 largest eigenvalues are the ESD
    ref = torch.linalg.eigvalsh(w.double().T @ w.double())[-12:]
    torch.testing.assert_close(e, ref, rtol=1e-9, atol=1e-9)


def test_esd_of_nonfinite_matrix_is_nan():
    w = torch.ones(4, 6)
    w[1, 2] = float("nan")
    assert torch.isnan(esd(w)).all()


def _pareto(alpha, n, seed):
    """Sample of the density (alpha - 1) x^-alpha on [1, inf): xmin = 1."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (1 - u) ** (-1 / (alpha - 1))


@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_hill_recovers_pareto_exponent(alpha):
    n = 5000
    x = _pareto(alpha, n, seed=1)
    # the MLE at the true xmin: standard deviation (alpha - 1) / sqrt(n) <= 0.043
    assert abs(hill_at(x, 1.0) - alpha) < 0.1
    # "peak": log10 of a Pareto sample has a decreasing density, so the fullest bin is
    # the first, xmin_peak = min(x) ~ xmin, and every candidate in [0.95, 1.5] * xmin
    # starts a tail that is itself Pareto(alpha): unbiased, about as precise as above.
    assert abs(hill_alpha(x, "peak") - alpha) < 0.1
    # "mid": the tail above the median is Pareto(alpha) with n / 2 points (3 sd < 0.2)
    assert abs(hill_alpha(x, "mid") - alpha) < 0.2
    # order and scale do not matter
    x = x[:1000]
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(2))
    assert hill_alpha(x[perm] * 37.0, "peak") == pytest.approx(hill_alpha(x, "peak"), rel=1e-9)


def test_hill_degenerate_spectra_give_nan():
    assert math.isnan(hill_alpha(torch.full((50,), 3.0, dtype=torch.float64)))
    assert math.isnan(hill_alpha(torch.zeros(50, dtype=torch.float64)))
    assert math.isnan(hill_alpha(torch.tensor([1.0], dtype=torch.float64), "mid"))
    assert math.isnan(hill_alpha(torch.tensor([], dtype=torch.float64)))
    # nan / zero eigenvalues are dropped, not propagated
    x = _pareto(3.0, 500, seed=3)
    dirty = torch.cat([x, torch.tensor([float("nan"), 0.0, -1.0], dtype=torch.float64)])
    assert hill_alpha(dirty, "peak") == pytest.approx(hill_alpha(x, "peak"))
    with pytest.raises(ValueError):
        hill_alpha(x, "median")


def test_block_alpha_is_mean_over_matrices():
    g = torch.Generator().manual_seed(4)
    mats = [torch.randn(30, 50, generator=g), torch.randn(40, 25, generator=g)]
    for mode in ("peak", "mid"):
        want = sum(hill_alpha(esd(m), mode) for m in mats) / 2
        assert block_alpha(mats, mode) == pytest.approx(want)
    assert reduction.OPS["alpha_peak"].fn(mats) == pytest.approx(block_alpha(mats, "peak"))
    assert reduction.OPS["alpha_mid"].fn(mats) == pytest.approx(block_alpha(mats, "mid"))


# ---------------------------------------------------------------- reductions


def test_outlier_fraction_hand_count():
    mats = [torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 30.0]]), torch.tensor([[1.0, 10.0]])]
    # 8 values, mean 46 / 8 = 5.75; 5 * mean = 28.75: only 30 is strictly above
    assert outlier_fraction(mats) == pytest.approx(1 / 8)
    # m = 1: 10 and 30 exceed 5.75
    assert outlier_fraction(mats, m=1.0) == pytest.approx(2 / 8)
    assert reduction.OPS["outlier"].fn(mats) == pytest.approx(1 / 8)
    # strictly greater: a value equal to m * mean does not count
    assert outlier_fraction([torch.tensor([[2.0, 0.0]])], m=2.0) == 0.0


def _block(seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 24, generator=g).abs(), torch.randn(24, 16, generator=g), torch.rand(8, 8, generator=g)]


def test_elementwise_reductions_match_concatenation(monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK", 37)  # exercise the chunked path
    mats = _block()
    cat = torch.cat([m.reshape(-1) for m in mats]).double()
    n = cat.numel()
    want = {
        "mean": cat.mean(),
        "var": cat.var(correction=0),
        "std": cat.std(correction=0),
        "l1": cat.abs().mean(),
        "l2": cat.norm(),
        "geomean": cat.abs().log().mean().exp(),
        "entropy": -(torch.softmax(cat, 0) * torch.log_softmax(cat, 0)).sum() / math.log(n),
    }
    for name, value in want.items():
        assert reduction.OPS[name].fn(mats) == pytest.approx(float(value), rel=1e-9), name
    # the entropy is normalised: uniform values give 1
    assert reduction.OPS["entropy"].fn([torch.full((5, 7), 0.3)]) == pytest.approx(1.0)


def test_matrix_reductions_on_known_matrices():
    u, v = torch.arange(1.0, 7.0), torch.arange(1.0, 11.0)
    low_rank = torch.outer(u, v)  # rank 1 of 6
    full = torch.eye(6)
    assert reduction.OPS["rank"].fn([low_rank, full]) == pytest.approx((1 / 6 + 1) / 2)
    # logdet: identity -> G = I / 6 -> mean log eigenvalue ln(1/6); singular -> -inf
    assert reduction.OPS["logdet"].fn([full]) == pytest.approx(math.log(1 / 6))
    assert reduction.OPS["logdet"].fn([low_rank]) < -10
    # corr: proportional rows correlate perfectly; rows of I correlate -1/(k-1)
    assert reduction.OPS["corr"].fn([low_rank]) == pytest.approx(1.0)
    assert reduction.OPS["corr"].fn([full]) == pytest.approx(1 / 5)
    big = torch.randn(600, 40, generator=torch.Generator().manual_seed(6))
    c = reduction.OPS["corr"].fn([big])  # subsampled rows: cheap, deterministic, in [0, 1]
    assert 0 < c < 1 and c == reduction.OPS["corr"].fn([big])


def _degenerate_blocks():
    nan = _block()
    nan[0][3, 4] = float("nan")
    inf = _block()
    inf[1][0, 0] = float("inf")
    return {
        "zeros": [torch.zeros(6, 9), torch.zeros(9, 6)],
        "constant": [torch.full((6, 9), 2.5)],
        "nan": nan,
        "inf": inf,
        "huge": [torch.full((5, 5), 3e38), torch.full((5, 5), -3e38)],
        "empty_list": [],
        "empty_matrix": [torch.zeros(0, 5)],
        "row": [torch.randn(1, 7)],
    }


@pytest.mark.parametrize("name", list(reduction.OPS))
def test_reductions_never_raise(name):
    fn = reduction.OPS[name].fn
    assert math.isfinite(fn(_block())), name
    for case, mats in _degenerate_blocks().items():
        out = fn(mats)
        assert isinstance(out, float), (name, case)


# ---------------------------------------------------------------- element-wise stages


def _dirty(dtype, huge):
    vals = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 7.0, 1e-30, -1e-30, 1e-3, 88.0, -88.0, huge, -huge]
    return torch.tensor(vals, dtype=dtype)


CASES = {
    pre: (torch.float32, 3e38, lambda t: t.reshape(2, 7)),  # any shape
    transform: (torch.float64, 1e300, lambda t: t),
    post: (torch.float64, 1e300, lambda t: t),
}
NAN_OUTSIDE_UNIT = {"dsa_asin", "dsa_acos"}  # DSA's: nan outside [-1, 1] by design


def _tensor_fn(mod, name):
    """The op as a tensor -> tensor function (a block-level pre op sees a one-matrix block)."""
    fn = mod.OPS[name].fn
    if mod is pre and name in pre.BLOCK:
        return lambda t: fn([t])[0]
    return fn


@pytest.mark.parametrize(
    "mod,name", [(m, n) for m in CASES for n in m.OPS], ids=lambda v: v if isinstance(v, str) else v.__name__.split(".")[-1]
)
def test_elementwise_ops_robust(mod, name):
    dtype, huge, shape = CASES[mod]
    fn = _tensor_fn(mod, name)
    x = shape(_dirty(dtype, huge))
    keep = x.clone()
    out = fn(x)
    assert out.shape == x.shape and out.dtype == dtype
    if name in NAN_OUTSIDE_UNIT:
        assert torch.equal(torch.isnan(out), x.abs() > 1), name
    else:
        assert torch.isfinite(out).all(), f"{name} not finite on finite input"
    assert torch.equal(x, keep), "input modified"
    # nan / inf inputs and degenerate vectors must not raise
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y.view(-1)[2] = bad
        assert fn(y).shape == x.shape
    for flat in (torch.zeros(5, dtype=dtype), torch.full((5,), 3.0, dtype=dtype), torch.zeros(0, dtype=dtype)):
        assert fn(flat).shape == flat.shape


def test_pre_accepts_other_dtypes_and_shapes():
    x = torch.randn(3, 4, 5, dtype=torch.float16)
    for name in pre.OPS:
        out = _tensor_fn(pre, name)(x)
        assert out.shape == x.shape and out.dtype == torch.float32, name
    # float64 (the depth operand) stays float64, exactly
    d = torch.tensor([[0.1]], dtype=torch.float64)
    for name in pre.OPS:
        assert _tensor_fn(pre, name)(d).dtype == torch.float64, name
    assert pre.noop(d) is d


def test_apply_chain_composes_elementwise_ops_per_matrix_and_block_ops_per_block():
    mats = _block()
    want = [pre.tanh(pre.abslog(m)) for m in mats]
    got = pre.apply_chain(["abslog", "tanh"], mats)
    assert all(torch.equal(a, b) for a, b in zip(got, want))  # the interpreter's old `second(first(m))`
    assert pre.apply_chain([], mats) is mats
    z = pre.apply_chain(["abs", "dsa_zscore"], mats)
    cat = torch.cat([m.abs().reshape(-1) for m in mats]).double()
    want = (cat - cat.mean()) / cat.std()
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in z]).double(), want, rtol=1e-5, atol=1e-6)
    assert [t.shape for t in z] == [m.shape for m in mats]


def test_zscore_minmax():
    x = torch.randn(40, 30, generator=torch.Generator().manual_seed(7)) * 1e30 + 5e30
    z = pre.zscore(x)
    assert abs(float(z.mean())) < 1e-4 and float(z.std(correction=0)) == pytest.approx(1.0, rel=1e-4)
    m = pre.minmax(x)
    assert float(m.min()) == 0.0 and float(m.max()) == pytest.approx(1.0)
    c = torch.full((4, 4), 3.0)
    assert torch.equal(pre.zscore(c), torch.zeros_like(c)) and torch.equal(pre.minmax(c), torch.zeros_like(c))


def test_guards():
    assert float(pre.log(torch.tensor(0.0))) == pytest.approx(math.log(torch.finfo(torch.float32).tiny))
    assert float(pre.log(pre.exp(torch.tensor(-50.0)))) == pytest.approx(-50.0)  # floor, not +eps
    assert float(transform.asin(torch.tensor(2.0, dtype=torch.float64))) == pytest.approx(math.pi / 2)
    assert float(pre.exp(torch.tensor(1000.0))) == pytest.approx(math.exp(80), rel=1e-6)


def test_guards_are_a_value_the_ops_receive():
    """The ops that fall back on a guard take it as `guards` (calling the Op passes it to them
    alone); the defaults are the ops' own constants, MOVED_GUARDS moves each one."""
    readers = {mod: {name for name, op in mod.OPS.items() if op.reads_guards} for mod in NAMES}
    assert readers == {pre: {"exp", "log", "abslog", "dsa_abslog", "dsa_log"}, reduction: {"geomean"},
                       transform: {"exp", "log"}, post: {"log"}}
    assert (DEFAULT_GUARDS.log_floor32, DEFAULT_GUARDS.log_floor64) == (torch.finfo(torch.float32).tiny,
                                                                        torch.finfo(torch.float64).tiny)
    assert all(getattr(MOVED_GUARDS, f.name) != getattr(DEFAULT_GUARDS, f.name) for f in dataclasses.fields(Guards))
    zero32, zero64 = torch.zeros(3), torch.zeros(3, dtype=torch.float64)
    for guards, floor32, floor64, exp_max in ((DEFAULT_GUARDS, torch.finfo(torch.float32).tiny,
                                               torch.finfo(torch.float64).tiny, 80.0),
                                              (MOVED_GUARDS, 1e-30, 1e-300, 85.0)):
        assert float(pre.OPS["log"](zero32, guards)[0]) == pytest.approx(math.log(floor32), rel=1e-6)
        assert float(pre.OPS["abslog"](zero32, guards)[0]) == pytest.approx(-math.log(floor32), rel=1e-6)
        assert reduction.OPS["geomean"]([zero32], guards) == pytest.approx(floor32, rel=1e-5)
        assert float(transform.OPS["log"](zero64, guards)[0]) == pytest.approx(math.log(floor64), rel=1e-12)
        assert float(post.OPS["log"](zero64, guards)[0]) == pytest.approx(math.log(floor64), rel=1e-12)
        big = torch.tensor([1000.0])
        assert float(pre.OPS["exp"](big, guards)) == pytest.approx(math.exp(exp_max), rel=1e-6)
        assert float(transform.OPS["exp"](big.double(), guards)) == pytest.approx(math.exp(exp_max), rel=1e-12)
    # DSA's logs: 0 (dsa_log: x <= 0) set to dsa_zero_fill, then ln(x + dsa_log_eps) for dsa_log.
    x = torch.tensor([0.0, -1.0, 3.0])
    for guards, fill, eps in ((DEFAULT_GUARDS, 1.0, 1e-6), (MOVED_GUARDS, 2.0, 1e-4)):
        want = [math.log(fill + eps)] * 2 + [math.log(3 + eps)]
        assert pre.OPS["dsa_log"](x, guards).tolist() == pytest.approx(want, abs=1e-7)  # float32
    assert pre.OPS["dsa_abslog"](x, MOVED_GUARDS).tolist() == pytest.approx([math.log(2), 0.0, math.log(3)])
    assert pre.OPS["dsa_abslog"](x, DEFAULT_GUARDS).tolist() == pytest.approx([0.0, 0.0, math.log(3)])
    # Both block-level and element-wise ops in one chain, with the moved value passed through.
    chain = pre.apply_chain(["dsa_zscore", "log"], [torch.full((2, 2), 3.0)], MOVED_GUARDS)
    assert chain[0].reshape(-1).tolist() == pytest.approx([math.log(1e-30)] * 4, rel=1e-6)  # zscore of a constant: 0


def test_post_rank_and_softmax():
    x = torch.tensor([2.0, 1.0, 2.0, 0.0], dtype=torch.float64)
    assert post.rank(x).tolist() == [2.0, 1.0, 3.0, 0.0]  # ties by index
    s = post.softmax(torch.tensor([1000.0, 0.0, -1000.0], dtype=torch.float64))
    assert torch.isfinite(s).all() and float(s.sum()) == pytest.approx(1.0)


# ---------------------------------------------------------------- sympy twins


def _plain(expr):
    return not expr.atoms(AppliedUndef)


GENERIC = np.array([-2.5, -0.7, -0.2, 0.3, 0.9, 1.7, 3.0])
UNIT = np.array([-0.9, -0.3, 0.1, 0.8])  # asin / acos domain


@pytest.mark.parametrize(
    "mod,name", [(m, n) for m in CASES for n in m.OPS], ids=lambda v: v if isinstance(v, str) else v.__name__.split(".")[-1]
)
def test_twin_agrees_with_torch(mod, name):
    op = mod.OPS[name]
    expr = op.sym(X)
    assert isinstance(expr, sympy.Expr)
    if not _plain(expr):  # whole-tensor ops: undefined function of x
        assert expr.free_symbols == {X} and name in str(expr)
        return
    dtype = CASES[mod][0]
    pts = UNIT if name in ("asin", "acos", "dsa_asin", "dsa_acos") else GENERIC
    if name in ("dsa_abslog", "dsa_log"):  # where DSA's special cases apply
        pts = np.concatenate([pts, [0.0, -1.0]])
    with np.errstate(divide="ignore", invalid="ignore"):  # numpy evaluates every Piecewise branch
        want = sympy.lambdify(X, expr, "numpy")(pts) * np.ones_like(pts)
    got = _tensor_fn(mod, name)(torch.tensor(pts, dtype=dtype)).double().numpy()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_reduction_twins_print_readably():
    e = pre.OPS["abslog"].sym(X)
    assert str(reduction.OPS["var"].sym(e)) == "var(Abs(log(Abs(x))))"
    assert str(reduction.OPS["std"].sym(X)) == "sqrt(var(x))"
    assert str(reduction.OPS["geomean"].sym(X)) == "exp(mean(log(Abs(x))))"
    chain = post.OPS["noop"].sym(transform.OPS["asin"].sym(transform.OPS["atan"].sym(reduction.OPS["var"].sym(e))))
    assert str(chain) == "asin(atan(var(Abs(log(Abs(x))))))"
    for name, op in reduction.OPS.items():
        out = op.sym(e)
        assert isinstance(out, sympy.Expr) and out.free_symbols == {X}, name

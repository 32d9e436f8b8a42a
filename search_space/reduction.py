"""Reductions: a decoder block's (pre-processed) score matrices -> one python float.

Every reduction takes `mats: list[Tensor]`, the 2-D score matrices of one block's linear
layers, and returns a float. Two kinds:

- element-wise (ELEMENTWISE): act on the concatenation of all flattened matrices, as OWL
  does for its block metric (and DSA for all of its reductions, lliai/DSA
  lib/prune_all.py:2060): mean, var, std, l1, l2, geomean, entropy, outlier, var_unbiased.
  They stream over the matrices in float64 chunks, so the concatenation is never built
  and memory stays bounded whatever the model size.
- matrix (MATRIX): act on each matrix and return the mean over the matrices, as
  AlphaPruning averages per-layer alphas into a block value: rank, logdet, corr,
  alpha_peak, alpha_mid.

No reduction raises on degenerate input (empty list, constant, zeros, nan, inf): the
result is then a float that may be nan or +-inf; the caller sanitises.

Sympy twins map the element expression to the block scalar, e.g. `var(Abs(log(x)))`;
undefined functions stand for the reductions sympy has no function for.
"""
import math

import sympy
import torch

from dsa.core.constants import OWL_M
from dsa.core.guards import DEFAULT_GUARDS, Guards
from dsa.core.numerics import (NAN, block_alpha, chunks, element_count, element_mean, element_sum,
                                    mean_over, outlier_fraction)

from .op import Op, registry

CORR_ROWS = 256  # rows kept by corr (evenly spaced) to stay cheap


# ---------------------------------------------------------------- element-wise


def mean(mats):
    return element_mean(mats)


def var(mats):
    """Population variance (two passes: no cancellation)."""
    n = element_count(mats)
    if not n:
        return NAN
    mu = element_sum(mats) / n
    return element_sum(mats, lambda c: (c - mu).square_()) / n


def var_unbiased(mats):
    """torch.var's default, unbiased (sum of squared deviations / (n - 1)): DSA's VAR
    ("VAR": torch.var, lliai/DSA lib/autolayer.py:357, called on the block's concatenated
    scores). nan for fewer than 2 values, as torch.var. Two float64 passes (DSA: float32)."""
    n = element_count(mats)
    if n < 2:
        return NAN
    mu = element_sum(mats) / n
    return element_sum(mats, lambda c: (c - mu).square_()) / (n - 1)


def std(mats):
    v = var(mats)
    return math.sqrt(v) if v >= 0 else NAN


def l1(mats):
    n = element_count(mats)
    return element_sum(mats, torch.abs) / n if n else NAN


def l2(mats):
    """Frobenius norm of the concatenation."""
    return math.sqrt(element_sum(mats, torch.square)) if mats else NAN


def geomean(mats, *, guards: Guards = DEFAULT_GUARDS):
    """exp(mean ln max(|x|, floor)): the floor is pre.log's (guards.log_floor32)."""
    n = element_count(mats)
    if not n:
        return NAN
    floor = guards.log_floor32
    mlog = element_sum(mats, lambda c: c.abs_().clamp_min_(floor).log_()) / n
    return math.exp(mlog) if mlog < 709 else math.inf


def entropy(mats):
    """Entropy of softmax(all values), divided by ln(n): in [0, 1] (1 = uniform).

    H = ln Z - sum(e * d) / Z with d = x - max(x), e = exp(d), Z = sum(e).
    """
    n = element_count(mats)
    if n < 2:
        return NAN
    tops = [float(m.max()) for m in mats if m.numel()]
    if not all(math.isfinite(t) for t in tops):
        return NAN
    top = max(tops)
    z = 0.0
    ed = 0.0
    for c in chunks(mats):
        d = c.sub_(top)
        e = d.exp()
        z += float(e.sum())
        ed += float(e.mul_(d).sum())
    if not z > 0:
        return NAN
    return (math.log(z) - ed / z) / math.log(n)


# ---------------------------------------------------------------- matrix


def _finite(m):
    return m.numel() > 0 and bool(torch.isfinite(m).all())


def _rank(m):
    """Numerical rank / min(shape), at float32 precision (the scores' precision)."""
    if not _finite(m):
        return NAN
    return int(torch.linalg.matrix_rank(m.to(torch.float32))) / min(m.shape)


def _logdet(m):
    """slogdet(G) / r with G = A A^T / c, A = m oriented r x c with r <= c:
    the mean log-eigenvalue of the small-side second-moment matrix (-inf if singular)."""
    if not _finite(m):
        return NAN
    a = m.to(torch.float64)
    if a.shape[0] > a.shape[1]:
        a = a.T
    r, c = a.shape
    sign, logabs = torch.linalg.slogdet(a @ a.T / c)
    return float(logabs) / r if float(sign) > 0 else -math.inf


def _corr(m):
    """Mean |Pearson correlation| between distinct rows (at most CORR_ROWS rows, evenly
    spaced). A constant row correlates 0 with everything."""
    if not _finite(m) or m.shape[0] < 2:
        return NAN
    rows = m.shape[0]
    if rows > CORR_ROWS:
        keep = torch.linspace(0, rows - 1, CORR_ROWS).round().long().to(m.device)
        m = m[keep]
    a = m.to(torch.float64)
    a = a - a.mean(1, keepdim=True)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-300)
    c = (a @ a.T).abs()
    k = c.shape[0]
    return float((c.sum() - c.diagonal().sum()) / (k * (k - 1)))


def rank(mats):
    return mean_over(mats, _rank)


def logdet(mats):
    return mean_over(mats, _logdet)


def corr(mats):
    return mean_over(mats, _corr)


def alpha_peak(mats):
    return block_alpha(mats, "peak")


def alpha_mid(mats):
    return block_alpha(mats, "mid")


def outlier(mats):
    return outlier_fraction(mats, OWL_M)


# ---------------------------------------------------------------- registry

ELEMENTWISE = frozenset({"mean", "var", "std", "l1", "l2", "geomean", "entropy", "outlier", "var_unbiased"})
MATRIX = frozenset({"rank", "logdet", "corr", "alpha_peak", "alpha_mid"})

_F = sympy.Function

OPS = registry(
    Op("mean", mean, _F("mean")),
    Op("var", var, _F("var")),
    Op("std", std, lambda e: sympy.sqrt(_F("var")(e))),
    Op("l1", l1, lambda e: _F("mean")(sympy.Abs(e))),
    Op("l2", l2, _F("l2")),
    Op("geomean", geomean, lambda e: sympy.exp(_F("mean")(sympy.log(sympy.Abs(e))))),
    Op("entropy", entropy, _F("entropy")),
    Op("rank", rank, _F("rank")),
    Op("logdet", logdet, _F("logdet")),
    Op("corr", corr, _F("corr")),
    Op("alpha_peak", alpha_peak, _F("alpha_peak")),
    Op("alpha_mid", alpha_mid, _F("alpha_mid")),
    Op("outlier", outlier, _F("outlier")),
    Op("var_unbiased", var_unbiased, _F("var_unbiased")),
)

"""Pre-processing: element-wise ops on a block's score tensor (any shape -> same shape).

Every op works in float32 (the input is converted once if it is another dtype) and
allocates at most one tensor of the input's size: the output, then updated in place.
The input itself is never modified; `noop` returns it unchanged (callers must not
modify results in place).

Guards (numerical only; the sympy twins are the plain functions):
- log, abslog: ln(max(|x|, TINY)) with TINY the smallest normal float32 (1.18e-38):
  exactly ln|x| for every normal float32, and 0 (or a subnormal) maps to ln(TINY) = -87.34.
  A floor rather than an additive epsilon keeps e.g. log(exp(x)) == x down to x = -87.
- exp: input clamped to <= EXP_MAX = 80 (e^80 = 5.5e34, finite in float32 with room
  left for a following op).
- square: result clamped to the largest float32 (no overflow to inf).
- zscore, minmax: computed on x / max|x| so huge values cannot overflow; a tensor whose
  spread is below SPREAD_EPS * max|x| (constant to float32 precision) maps to zeros.
  Their twins are undefined functions `zscore(x)`, `minmax(x)`: they depend on the whole
  tensor, not on x alone.
"""
import math

import sympy
import torch

from .op import Op, registry

TINY = torch.finfo(torch.float32).tiny
F32_MAX = torch.finfo(torch.float32).max
EXP_MAX = 80.0
SPREAD_EPS = 1e-6


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.to(torch.float32)


def noop(x):
    return _f32(x)


def abs_(x):
    return _f32(x).abs()


def square(x):
    return torch.square(_f32(x)).clamp_(max=F32_MAX)


def exp(x):
    return _f32(x).clamp(max=EXP_MAX).exp_()


def sigmoid(x):
    return torch.sigmoid(_f32(x))


def tanh(x):
    return torch.tanh(_f32(x))


def log(x):
    return _f32(x).abs().clamp_min_(TINY).log_()


def abslog(x):
    return log(x).abs_()


def _scaled(x):
    """(x / max|x|, min, max of the scaled copy), or None when x is all zeros.

    Scaling first keeps sums of squares and max - min finite for any finite input.
    """
    mn, mx = (float(v) for v in torch.aminmax(x))
    s = max(abs(mn), abs(mx))
    if s == 0.0:
        return None
    if not math.isfinite(s):  # inf/nan input: skip scaling, let nan propagate
        s = 1.0
    return x / s, mn / s, mx / s


def _normalised(x, finish):
    """Empty -> empty, constant (or all-zero) -> zeros, else finish(x / max|x|, min, max)."""
    x = _f32(x)
    if x.numel() == 0:
        return x.clone()
    scaled = _scaled(x)
    if scaled is None:
        return torch.zeros_like(x)
    y, mn, mx = scaled
    if mx - mn <= SPREAD_EPS:  # constant up to float32 precision (also false for nan)
        return y.zero_()
    return finish(y, mn, mx)


def _standardise(y, mn, mx):
    std, mean = torch.std_mean(y, correction=0)
    return y.sub_(mean).div_(std)


def zscore(x):
    return _normalised(x, _standardise)


def minmax(x):
    return _normalised(x, lambda y, mn, mx: y.sub_(mn).div_(mx - mn))


def _sigmoid_sym(x):
    return 1 / (1 + sympy.exp(-x))


OPS = registry(
    Op("noop", noop, lambda x: x),
    Op("abs", abs_, sympy.Abs),
    Op("square", square, lambda x: x**2),
    Op("exp", exp, sympy.exp),
    Op("sigmoid", sigmoid, _sigmoid_sym),
    Op("tanh", tanh, sympy.tanh),
    Op("log", log, lambda x: sympy.log(sympy.Abs(x))),
    Op("abslog", abslog, lambda x: sympy.Abs(sympy.log(sympy.Abs(x)))),
    Op("zscore", zscore, sympy.Function("zscore")),
    Op("minmax", minmax, sympy.Function("minmax")),
)

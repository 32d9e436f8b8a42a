"""Pre-processing: ops on a block's score tensors (any shape -> same shape).

Two kinds:
- element-wise (every op but those in BLOCK): one tensor -> one tensor, applied to each of
  the block's matrices; the result does not depend on how the block is split into matrices.
- block-level (BLOCK: dsa_zscore, dsa_minmax): the block's list of matrices -> a list of the
  same shapes, normalised with statistics of the whole block, i.e. as DSA applies them to
  the block's scores concatenated and flattened (lliai/DSA lib/prune_all.py:2060, 2069).
  The statistics stream over float64 chunks: the concatenation is never built.
`apply_chain(names, mats)` runs a sequence of both kinds on a block (the interpreter's one
entry point).

Every op works in float32 (the input is converted once if it is another dtype; float64
input, e.g. the `depth` operand, stays float64) and an element-wise op allocates at most
one tensor of the input's size: the output, then updated in place.
The input itself is never modified; `noop` returns it unchanged (callers must not
modify results in place).

Guards (numerical only; the sympy twins are the plain functions). The ops that fall back on a
guard constant take it as the keyword `guards` (dsa.core.guards.Guards; default: the values below):
- log, abslog: ln(max(|x|, log_floor32)) with the floor the smallest normal float32 (1.18e-38):
  exactly ln|x| for every normal float32, and 0 (or a subnormal) maps to ln(floor) = -87.34.
  A floor rather than an additive epsilon keeps e.g. log(exp(x)) == x down to x = -87.
- exp: input clamped to <= exp_max = 80 (e^80 = 5.5e34, finite in float32 with room
  left for a following op).
- square: result clamped to the largest float32 (no overflow to inf).
- zscore, minmax: computed on x / max|x| so huge values cannot overflow; a tensor whose
  spread is below SPREAD_EPS * max|x| (constant to float32 precision) maps to zeros.
  Their twins are undefined functions `zscore(x)`, `minmax(x)`: they depend on the whole
  tensor, not on x alone.

DSA's own ops, as its code defines them (lliai/DSA lib/autolayer.py), under their own names:
- dsa_abslog (ABSLOG, l. 35-45): 0 set to 1, then ln|x|: ln|x| with 0 -> 0 (not |ln|x||).
- dsa_log (LOG, l. 24-32): x <= 0 set to 1, then ln(x + 1e-6) (so x <= 0 -> ln(1 + 1e-6)).
  (The 1 and the 1e-6 are guards.dsa_zero_fill and guards.dsa_log_eps, so the guard check moves them.)
- dsa_zscore (NORMALIZE, normalize_op l. 75-89, torch branch): (x - mean) / std over the
  whole block, std unbiased (torch.std), no epsilon; NaN results -> 0 (a constant or
  one-element block gives zeros).
- dsa_minmax (MMS, l. 343): (x - min) / (max - min + 1e-9) over the whole block.
No guards beyond DSA's: nan propagates (dsa_minmax of a block holding nan is all nan).
Twins: dsa_abslog and dsa_log are exact Piecewise functions (DSA's values at 0 and at x <= 0
are part of the op, not guards); dsa_zscore(x) and dsa_minmax(x) are undefined functions.
"""
import math

import sympy
import torch

from dsa.core import numerics as metrics
from dsa.core.guards import DEFAULT_GUARDS, Guards
from dsa.core.numerics import element_count, element_sum

from .op import Op, registry

F32_MAX = torch.finfo(torch.float32).max
SPREAD_EPS = 1e-6


def _f32(x: torch.Tensor) -> torch.Tensor:
    """float32 (float64 kept: the exact relative depth of the `depth` operand)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def noop(x):
    return _f32(x)


def abs_(x):
    return _f32(x).abs()


def square(x):
    return torch.square(_f32(x)).clamp_(max=F32_MAX)


def exp(x, *, guards: Guards = DEFAULT_GUARDS):
    return _f32(x).clamp(max=guards.exp_max).exp_()


def sigmoid(x):
    return torch.sigmoid(_f32(x))


def tanh(x):
    return torch.tanh(_f32(x))


def log(x, *, guards: Guards = DEFAULT_GUARDS):
    return _f32(x).abs().clamp_min_(guards.log_floor32).log_()


def abslog(x, *, guards: Guards = DEFAULT_GUARDS):
    return log(x, guards=guards).abs_()


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


# ---------------------------------------------------------------- DSA's own ops


def dsa_abslog(x, *, guards: Guards = DEFAULT_GUARDS):
    """DSA's ABSLOG (lib/autolayer.py:35-45): x[x == 0] = 1; ln|x|. So ln|x| with 0 -> 0."""
    y = _f32(x).abs()
    return y.masked_fill_(y == 0, guards.dsa_zero_fill).log_()


def dsa_log(x, *, guards: Guards = DEFAULT_GUARDS):
    """DSA's LOG (lib/autolayer.py:24-32): x[x <= 0] = 1; ln(x + 1e-6)."""
    x = _f32(x)
    return x.masked_fill(x <= 0, guards.dsa_zero_fill).add_(guards.dsa_log_eps).log_()


def _out_dtype(m):
    return torch.float64 if m.dtype == torch.float64 else torch.float32


def _chunked(m, f):
    """f over float64 chunks of m (f may work in place), written into a new float32 tensor
    of m's shape (float64 for float64 input): no float64 copy of a whole matrix."""
    out = torch.empty(m.shape, dtype=_out_dtype(m), device=m.device)
    flat, dest = m.reshape(-1), out.view(-1)
    step = metrics.CHUNK
    for i in range(0, flat.numel(), step):
        dest[i : i + step] = f(flat[i : i + step].to(torch.float64, copy=True))
    return out


def _zeros(mats):
    return [torch.zeros(m.shape, dtype=_out_dtype(m), device=m.device) for m in mats]


def dsa_zscore(mats):
    """DSA's NORMALIZE (normalize_op, lib/autolayer.py:75-81) over the whole block:
    C = (x - mean) / std with torch.std's unbiased std (n - 1), no epsilon; C[C != C] = 0.

    A constant block (std 0: DSA's 0 / 0), a one-element block (unbiased std nan) or a
    block holding nan or inf (nan statistics) gives zeros; an empty block an empty list.
    Mean and std are streamed in float64 (DSA: float32 on the concatenation).
    """
    n = element_count(mats)
    if n == 0:
        return _zeros(mats)
    mean = element_sum(mats) / n
    var = element_sum(mats, lambda c: c.sub_(mean).square_()) / (n - 1) if n > 1 else math.nan
    std = math.sqrt(var) if var >= 0 else math.nan  # nan when var is nan
    if std == 0 or not math.isfinite(std) or not math.isfinite(mean):
        return _zeros(mats)
    return [_chunked(m, lambda c: c.sub_(mean).div_(std)) for m in mats]


def dsa_minmax(mats):
    """DSA's MMS (lib/autolayer.py:343) over the whole block: (x - min) / (max - min + 1e-9).

    A constant block gives zeros (0 / 1e-9); nan anywhere gives nan everywhere (torch.min
    and torch.max propagate it); an empty block an empty list. The denominator is formed in
    float64 (DSA: float32, where the 1e-9 vanishes unless max - min is tiny).
    """
    bounds = [torch.aminmax(m.detach().reshape(-1)) for m in mats if m.numel()]
    if not bounds:
        return _zeros(mats)
    low = float(torch.stack([b.min for b in bounds]).to(torch.float64).min())
    high = float(torch.stack([b.max for b in bounds]).to(torch.float64).max())
    span = (high - low) + 1e-9
    return [_chunked(m, lambda c: c.sub_(low).div_(span)) for m in mats]


BLOCK = frozenset({"dsa_zscore", "dsa_minmax"})


def apply_chain(names, mats, guards: Guards = DEFAULT_GUARDS):
    """Pre-processing ops `names` (in order) on one block's matrices -> the block's new matrices.

    Consecutive element-wise ops run composed on each matrix in turn (only one intermediate
    matrix alive at a time: `second(first(m)) for m in mats`); a block-level op sees the
    whole list. An empty `names` returns `mats` itself. `guards`: the ops' guard constants.
    """
    out = mats
    pending = []

    def flush(mats, ops):
        if not ops:
            return mats
        result = []
        for m in mats:
            for op in ops:
                m = op(m, guards)
            result.append(m)
        return result

    for name in names:
        if name in BLOCK:
            out = OPS[name](flush(out, pending), guards)
            pending = []
        else:
            pending.append(OPS[name])
    return flush(out, pending)


_DSA_LOG_EPS_SYM = sympy.Rational(1, 10**6)  # exact, so printed formulas parse back unchanged


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
    # DSA's definitions (lib/autolayer.py): see the module docstring
    Op("dsa_abslog", dsa_abslog, lambda x: sympy.Piecewise((0, sympy.Eq(x, 0)), (sympy.log(sympy.Abs(x)), True))),
    Op("dsa_log", dsa_log, lambda x: sympy.Piecewise((sympy.log(x + _DSA_LOG_EPS_SYM), x > 0),
                                                     (sympy.log(1 + _DSA_LOG_EPS_SYM), True))),
    Op("dsa_zscore", dsa_zscore, sympy.Function("dsa_zscore")),
    Op("dsa_minmax", dsa_minmax, sympy.Function("dsa_minmax")),
)

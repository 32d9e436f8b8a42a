"""Does a function read the ops' numerical guards?

The ops are total functions: log floors |x| at the smallest normal float, DSA's logs set 0 to 1,
exp is clamped, division by ~0 gives 1, the sanitisers turn nan and inf into fixed numbers.
A function whose allocation is decided by such a constant reads the guard, not the data:
e.g. `log|tanh(d)|` gives block 0 (depth 0) ln(tiny) = -708 and so protects block 0 whatever
the model, a fact about where depth is 0 rather than a rule. The test: move every guard
constant (`perturbed()`), recompute the ratios, and call the function a guard reader when a
block's ratio moves by more than GUARD_TOLERANCE. A function that never reaches a guard gives
the same ratios to float precision; one that reaches it on a few of a block's millions of
scores moves by far less than the tolerance.

Moving a floor alone misses the worst case: -708 and -691 are both far below every other
block, and the lambda maps' min-max scaling gives block 0 the same extreme ratio either way.
So the test also moves depth's ends inward by 1e-4 (depth in [1e-4, 1 - 1e-4]): a function
continuous in depth moves its ratios by about 1e-4 times its slope, far below the tolerance;
one with a singularity at an end (log(0), log(log(1)), 1/(1 - d)) moves block 0 or the last
block from the guard's value to a finite one, by far more.

Not moved: asin/acos's clamp to [-1, 1], square's float32 ceiling, zscore/minmax's spread test
(their guarded values are the limits of the plain functions, not arbitrary numbers).
"""
from __future__ import annotations

from contextlib import contextmanager

from search_space import pre, reduction, transform

from dsa.allocation import ratios

from . import pipeline

GUARD_TOLERANCE = 1e-3  # largest per-block ratio change (absolute) a function may show

# (module, constant, moved value): each guard moved to another value as arbitrary as its own.
MOVED = (
    (pre, "TINY", 1e-30),                 # log / abslog floor: ln 0 = -87.3 -> -69.1
    (pre, "DSA_LOG_EPS", 1e-4),           # DSA's LOG: ln(x + 1e-6)
    (pre, "DSA_ZERO_FILL", 2.0),          # DSA's ABSLOG / LOG: 0 -> 1 before the log
    (pre, "EXP_MAX", 85.0),               # exp clamp (e^85 is still finite in float32)
    (reduction, "TINY32", 1e-30),         # geomean's floor
    (transform, "TINY", 1e-300),          # log floor (also post's log): ln 0 = -708.4 -> -690.8
    (transform, "EXP_MAX", 85.0),
    (pipeline, "DIV_FALLBACK", 2.0),      # protected division's quotient where the divisor vanishes
    (pipeline, "DEPTH_INSET", 1e-4),      # depth in [1e-4, 1 - 1e-4] instead of [0, 1]: see below
    (ratios, "NAN_FILL", 1.0),            # the sanitisers' nan
    (ratios, "INF_SENTINEL", 1e5),        # sanitize's +-inf
    (ratios, "DSA_INF_FILL", -2.0),       # DSA's sanitiser's +-inf
)


@contextmanager
def perturbed():
    """Every guard constant moved (see MOVED) inside the block, restored after (also on error).
    Process-wide: a worker wraps its own feature computations in it."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in MOVED]
    try:
        for module, name, value in MOVED:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def guard_shift(found, moved) -> float:
    """Largest per-block change between the ratios found and those with the guards moved."""
    return max(abs(a - b) for a, b in zip(found, moved))

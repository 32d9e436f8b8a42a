"""Does a function read the ops' numerical guards?

The ops are total functions: log floors |x| at the smallest normal float, DSA's logs set 0 to 1,
exp is clamped, division by ~0 gives 1, the sanitisers turn nan and inf into fixed numbers
(dsa.core.guards.Guards holds them all). A function whose allocation is decided by such a
constant reads the guard, not the data: e.g. `log|tanh(d)|` gives block 0 (depth 0)
ln(tiny) = -708 and so protects block 0 whatever the model, a fact about where depth is 0
rather than a rule. The test: compute the ratios again with every guard constant moved
(MOVED_GUARDS, passed to the interpreter like the default value) and call the function a guard
reader when a block's ratio moves by more than GUARD_TOLERANCE. A function that never reaches a
guard gives the same ratios to float precision; one that reaches it on a few of a block's
millions of scores moves by far less than the tolerance.

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

from dsa.core.guards import MOVED_GUARDS  # noqa: F401  (the check's second value, for its callers)

GUARD_TOLERANCE = 1e-3  # largest per-block ratio change (absolute) a function may show


def guard_shift(found, moved) -> float:
    """Largest per-block change between the ratios found and those with the guards moved."""
    return max(abs(a - b) for a, b in zip(found, moved))

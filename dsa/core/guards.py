"""The ops' numerical guards as one value, passed down to every op that falls back on one.

The search's ops are total functions: where the plain function is undefined or overflows
(log 0, exp of a large number, division by ~0, nan and inf before a map) they return a fixed
number instead. Those numbers are the fields of `Guards`. The interpreter passes a `Guards`
value down to the ops and the sanitisers; `DEFAULT_GUARDS` (the defaults) is what every
result uses, `MOVED_GUARDS` moves each guard to another value as arbitrary as its own, so the
guard check can tell a function that reads a guard from one that reads the data.

Not guards (never moved): asin/acos's clamp to [-1, 1], square's float32 ceiling,
zscore/minmax's spread test: their guarded values are the limits of the plain functions, not
arbitrary numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Guards:
    """The constants the ops fall back on; the defaults are the ops' own."""

    log_floor32: float = torch.finfo(torch.float32).tiny  # pre's log, abslog and geomean: ln(max(|x|, floor))
    log_floor64: float = torch.finfo(torch.float64).tiny  # transform's (and post's) log: ln(max(|x|, floor))
    exp_max: float = 80.0  # exp's input clamp, pre and transform (e^80 = 5.5e34: finite in float32, with room)
    dsa_log_eps: float = 1e-6  # DSA's LOG: ln(x + 1e-6)
    dsa_zero_fill: float = 1.0  # DSA's ABSLOG and LOG set 0 (LOG: x <= 0) to this before the log
    div_fallback: float = 1.0  # protected division's quotient where the divisor vanishes
    depth_inset: float = 0.0  # the depth operand spans [inset, 1 - inset]
    nan_fill: float = 0.0  # what both sanitisers put for nan (DSA's convention)
    inf_sentinel: float = 1e6  # sanitize's +-inf: DSA's large finite value, so a map never crashes
    dsa_inf_fill: float = -1.0  # what DSA's sanitiser puts for +-inf


DEFAULT_GUARDS = Guards()

# Each guard moved to another value as arbitrary as its own (the guard check's second run).
MOVED_GUARDS = Guards(
    log_floor32=1e-30,  # log / abslog floor: ln 0 = -87.3 -> -69.1; geomean's floor
    log_floor64=1e-300,  # log floor (also post's log): ln 0 = -708.4 -> -690.8
    exp_max=85.0,  # exp clamp (e^85 is still finite in float32)
    dsa_log_eps=1e-4,  # DSA's LOG: ln(x + 1e-6)
    dsa_zero_fill=2.0,  # DSA's ABSLOG / LOG: 0 -> 1 before the log
    div_fallback=2.0,  # protected division's quotient where the divisor vanishes
    # depth in [1e-4, 1 - 1e-4] instead of [0, 1]: a function continuous in depth barely moves,
    # one with a singularity at an end (log(0), 1/(1 - d)) moves block 0 or the last block a lot
    depth_inset=1e-4,
    nan_fill=1.0,  # the sanitisers' nan
    inf_sentinel=1e5,  # sanitize's +-inf
    dsa_inf_fill=-2.0,  # DSA's sanitiser's +-inf
)

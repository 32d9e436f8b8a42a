"""Transforms: scalar ops applied element-wise to the vector of block values
(a 1-D float64 tensor, one entry per block; output has the same shape, float64).

Guards (numerical only; the sympy twins are the plain functions). log and exp take their guard
constant as the keyword `guards` (dsa.core.guards.Guards; default: the values below):
- asin, acos: input clamped to [-1, 1] (so asin(2) = pi/2, acos(2) = 0).
- log: ln(max(|x|, log_floor64)), the floor the smallest normal float64 (2.2e-308): exactly ln|x|
  for every normal float64; 0 maps to -708.4.
- sqrt: sqrt(|x|).
- exp: input clamped to <= exp_max = 80, as in pre.exp.
tan is left alone: it is finite for every finite float64.

DSA's own asin and acos (lliai/DSA lib/autolayer.py:368-369, torch.asin / torch.acos on the
block scalar), unguarded: dsa_asin, dsa_acos give nan outside [-1, 1]. The nan propagates
through later transforms (as in DSA, where nan in, nan out) and DSA's sanitiser turns it
into 0 at the end (lib/autolayer.py:455-456; `map_dsa` applies it, ratios.sanitize_dsa).
"""
import sympy
import torch
import torch.nn.functional as F

from dsa.core.guards import DEFAULT_GUARDS, Guards

from .op import Op, registry


def _f64(x):
    return x if x.dtype == torch.float64 else x.to(torch.float64)


def noop(x):
    return _f64(x)


def sin(x):
    return torch.sin(_f64(x))


def cos(x):
    return torch.cos(_f64(x))


def tan(x):
    return torch.tan(_f64(x))


def asin(x):
    return _f64(x).clamp(-1.0, 1.0).asin_()


def acos(x):
    return _f64(x).clamp(-1.0, 1.0).acos_()


def dsa_asin(x):
    """torch.asin, nan outside [-1, 1] (DSA's ASIN, lib/autolayer.py:368)."""
    return torch.asin(_f64(x))


def dsa_acos(x):
    """torch.acos, nan outside [-1, 1] (DSA's ACOS, lib/autolayer.py:369)."""
    return torch.acos(_f64(x))


def atan(x):
    return torch.atan(_f64(x))


def exp(x, *, guards: Guards = DEFAULT_GUARDS):
    return _f64(x).clamp(max=guards.exp_max).exp_()


def log(x, *, guards: Guards = DEFAULT_GUARDS):
    return _f64(x).abs().clamp_min_(guards.log_floor64).log_()


def abs_(x):
    return _f64(x).abs()


def sigmoid(x):
    return torch.sigmoid(_f64(x))


def tanh(x):
    return torch.tanh(_f64(x))


def softplus(x):
    return F.softplus(_f64(x))  # returns x itself above 20: no overflow


def sqrt(x):
    return _f64(x).abs().sqrt_()


OPS = registry(
    Op("noop", noop, lambda x: x),
    Op("sin", sin, sympy.sin),
    Op("cos", cos, sympy.cos),
    Op("tan", tan, sympy.tan),
    Op("asin", asin, sympy.asin),
    Op("acos", acos, sympy.acos),
    Op("atan", atan, sympy.atan),
    Op("exp", exp, sympy.exp),
    Op("log", log, lambda x: sympy.log(sympy.Abs(x))),
    Op("abs", abs_, sympy.Abs),
    Op("sigmoid", sigmoid, lambda x: 1 / (1 + sympy.exp(-x))),
    Op("tanh", tanh, sympy.tanh),
    Op("softplus", softplus, lambda x: sympy.log(1 + sympy.exp(x))),
    Op("sqrt", sqrt, lambda x: sympy.sqrt(sympy.Abs(x))),
    Op("dsa_asin", dsa_asin, sympy.asin),
    Op("dsa_acos", dsa_acos, sympy.acos),
)

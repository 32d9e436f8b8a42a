"""Post-processing over the whole vector of block values (1-D float64 -> same shape).

sigmoid, log, tanh act element-wise (log guarded as transform.log: ln(max(|x|, guards.log_floor64)));
softmax and rank see the whole vector, so their twins are undefined functions
`softmax(x)`, `rank(x)`.
"""
import sympy
import torch

from .op import Op, registry
from .transform import log, sigmoid, tanh


def _f64(x):
    return x if x.dtype == torch.float64 else x.to(torch.float64)


def noop(x):
    return _f64(x)


def softmax(x):
    return torch.softmax(_f64(x), dim=-1)  # max-shifted: finite for finite input


def rank(x):
    """0..n-1 ranks as float64, ascending; ties broken by index (stable sort), so the
    result is deterministic. nan sorts last."""
    x = _f64(x)
    order = torch.argsort(x.reshape(-1), stable=True)
    out = torch.empty(x.numel(), dtype=torch.float64, device=x.device)
    out[order] = torch.arange(x.numel(), dtype=torch.float64, device=x.device)
    return out.reshape(x.shape)


OPS = registry(
    Op("noop", noop, lambda x: x),
    Op("sigmoid", sigmoid, lambda x: 1 / (1 + sympy.exp(-x))),
    Op("log", log, lambda x: sympy.log(sympy.Abs(x))),
    Op("tanh", tanh, sympy.tanh),
    Op("softmax", softmax, sympy.Function("softmax")),
    Op("rank", rank, sympy.Function("rank")),
)

"""The one record type shared by every stage of the search space."""
import inspect
from dataclasses import dataclass, field
from typing import Callable

from dsa.core.guards import Guards


@dataclass(frozen=True)
class Op:
    """A search-space operator: a pure torch function and its sympy twin.

    `fn` does the numerical work; `sym` maps a sympy expression to the expression the
    op stands for, so a discovered pipeline can be printed as one formula.
    An op that falls back on a guard constant (dsa.core.guards) takes it as the keyword
    `guards`; calling the Op (`op(x, guards)`) passes it to those ops only.
    """

    name: str
    fn: Callable
    sym: Callable
    reads_guards: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Read once here from fn's signature, so the registries stay one line per op.
        object.__setattr__(self, "reads_guards", "guards" in _parameters(self.fn))

    def __call__(self, x, guards: Guards):
        """fn(x), given the guard constants when fn reads them."""
        return self.fn(x, guards=guards) if self.reads_guards else self.fn(x)


def _parameters(fn: Callable):
    try:
        return inspect.signature(fn).parameters
    except ValueError:  # a torch builtin (e.g. torch.relu) used as it is: reads no guard
        return {}


def registry(*ops: Op) -> dict[str, Op]:
    """Name -> Op, in the given order (the order is the gene encoding's order)."""
    out = {op.name: op for op in ops}
    if len(out) != len(ops):
        raise ValueError("duplicate op name")
    return out

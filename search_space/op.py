"""The one record type shared by every stage of the search space."""
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Op:
    """A search-space operator: a pure torch function and its sympy twin.

    `fn` does the numerical work; `sym` maps a sympy expression to the expression the
    op stands for, so a discovered pipeline can be printed as one formula.
    """

    name: str
    fn: Callable
    sym: Callable


def registry(*ops: Op) -> dict[str, Op]:
    """Name -> Op, in the given order (the order is the gene encoding's order)."""
    out = {op.name: op for op in ops}
    if len(out) != len(ops):
        raise ValueError("duplicate op name")
    return out

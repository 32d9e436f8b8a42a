"""Run an allocation function: block scores -> one value per block -> ratios meeting the budget.

Trees are interpreted node by node (never compiled or eval'd). The expensive part, a
(operand, pre-processing, reduction) prefix over every block's scores, is memoised: a search
has few distinct prefixes, so most candidates cost only scalar math on a vector of block values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from search_space import post, pre, reduction, transform

from . import ratios as ratio_maps
from .genome import CONSTANTS


class InvalidFunction(ValueError):
    """The function produced no usable ratios (non-finite values after sanitising)."""


@dataclass
class Node:
    name: str
    children: list["Node"]


def parse(names: list[str], arity: Callable[[str], int]) -> Node:
    """Prefix list of names -> nested nodes."""
    position = 0

    def take() -> Node:
        nonlocal position
        name = names[position]
        position += 1
        return Node(name, [take() for _ in range(arity(name))])

    root = take()
    if position != len(names):
        raise ValueError("trailing nodes after a complete tree")
    return root


def prefix_key(node: Node) -> str:
    """Canonical text of a reduction subtree, e.g. 'red_var(pre2_abslog(pre1_noop(wanda)))'."""
    if not node.children:
        return node.name
    return f"{node.name}({', '.join(prefix_key(c) for c in node.children)})"


def prefix_values(node: Node, block_mats: Callable[[str, int], list[torch.Tensor]], n_blocks: int) -> list[float]:
    """One value per block of a reduction prefix (operand -> pre1 -> pre2 -> reduction).

    `block_mats(operand, i)` returns block i's matrices for an operand (wanda, magnitude, weight).
    """
    pre2 = node.children[0]
    pre1 = pre2.children[0]
    operand = pre1.children[0].name
    reduce = reduction.OPS[node.name.removeprefix("red_")].fn
    first = pre.OPS[pre1.name.removeprefix("pre1_")].fn
    second = pre.OPS[pre2.name.removeprefix("pre2_")].fn
    return [float(reduce([second(first(m)) for m in block_mats(operand, i)])) for i in range(n_blocks)]


class FeatureMemo:
    """Per-block values of each reduction prefix, computed once.

    `compute(node)` gives a prefix's per-block values: `prefix_values` over local matrices, or a
    request to a worker that holds the model (the driver of a distributed search holds none).
    """

    def __init__(self, compute: Callable[[Node], list[float]]):
        self.compute = compute
        self.values: dict[str, list[float]] = {}
        self.hits = 0

    @classmethod
    def over(cls, block_mats: Callable[[str, int], list[torch.Tensor]], n_blocks: int) -> "FeatureMemo":
        return cls(lambda node: prefix_values(node, block_mats, n_blocks))

    def get(self, node: Node) -> torch.Tensor:
        key = prefix_key(node)
        if key in self.values:
            self.hits += 1
        else:
            self.values[key] = [float(v) for v in self.compute(node)]
        return torch.tensor(self.values[key], dtype=torch.float64)


def _arith(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if name == "arith_add":
        return a + b
    if name == "arith_sub":
        return a - b
    if name == "arith_mul":
        return a * b
    # protected division: 1 where the divisor vanishes
    return torch.where(b.abs() > 1e-12, a / torch.where(b.abs() > 1e-12, b, 1.0), torch.ones_like(a))


def block_values(node: Node, memo: FeatureMemo) -> torch.Tensor:
    """Value of a BlockVec-or-later node (reduction, arithmetic, transform or post)."""
    name = node.name
    if name.startswith("red_"):
        return memo.get(node)
    if name.startswith("arith_"):
        return _arith(name, block_values(node.children[0], memo), block_values(node.children[1], memo))
    inner = block_values(node.children[0], memo)
    with torch.no_grad():
        if name.startswith(("tr1_", "tr2_")):
            return transform.OPS[name[4:]].fn(inner)
        if name.startswith("post_"):
            return post.OPS[name[5:]].fn(inner)
    raise ValueError(f"unexpected node {name}")


def allocation_ratios(root: Node, memo: FeatureMemo, sizes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per-block ratios of a whole function; raises InvalidFunction when it yields none."""
    posted, constant = root.children
    values = ratio_maps.sanitize(block_values(posted, memo))
    value = CONSTANTS[constant.name]
    if root.name == "map_owl":
        result = ratio_maps.owl_map(values, sizes, sparsity, value)
    elif root.name == "map_alpha":
        result = ratio_maps.alpha_map(values, sizes, sparsity, value)
    else:
        raise ValueError(f"unexpected root {root.name}")
    if not torch.isfinite(result).all():
        raise InvalidFunction("non-finite ratios")
    return result

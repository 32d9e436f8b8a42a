"""Run an allocation function: block scores -> one value per block -> ratios meeting the budget.

Trees are interpreted node by node (never compiled or eval'd). The expensive part, a
(operand, pre-processing, reduction) prefix over every block's scores, is memoised: a search
has few distinct prefixes, so most candidates cost only scalar math on a vector of block values.

Every step takes the ops' guard constants as one value (`guards`, dsa.core.guards; default: the
ops' own), passed down to the ops and the sanitisers; a FeatureMemo holds the value its features
were computed with, and the scalar steps after it use the same. The guard check runs the same
function with MOVED_GUARDS: nothing global changes.

At matrix granularity (a memo with `units`, dsa.allocation.matrices.MatrixUnits) every step runs on
one value per prunable matrix instead of one per block: a prefix reduces each matrix's own scores,
the map spreads ratios over matrices weighted by their sizes, and a ROLE_OFFSETS root adds its
role offsets before the budget is restored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from search_space import post, pre, reduction, transform

from dsa.allocation import ratios as ratio_maps
from dsa.allocation.matrices import ROLES, MatrixUnits
from dsa.core.guards import DEFAULT_GUARDS, Guards

from .codec import DEPTH, SHARE, const_value, op_of, stage_of


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


def relative_depth(index: int, n_blocks: int, guards: Guards = DEFAULT_GUARDS) -> float:
    """The `depth` operand's value: index / (n_blocks - 1), 0 for the first block and 1 for the
    last (0 for a one-block model); moved inward by guards.depth_inset at both ends (the guard
    check's test of continuity at depth's ends)."""
    depth = index / (n_blocks - 1) if n_blocks > 1 else 0.0
    return guards.depth_inset + (1.0 - 2.0 * guards.depth_inset) * depth


def operand_mats(operand: str, index: int, n_blocks: int, block_mats: Callable[[str, int], list[torch.Tensor]],
                 guards: Guards = DEFAULT_GUARDS) -> list[torch.Tensor]:
    """Block `index`'s matrices for an operand. `depth` is one 1x1 float64 tensor holding the
    block's relative depth (so every pre-processing op and reduction applies to it); the others
    come from `block_mats`."""
    if operand == DEPTH:
        return [torch.tensor([[relative_depth(index, n_blocks, guards)]], dtype=torch.float64)]
    if operand == SHARE:
        raise ValueError("the share operand exists only at matrix granularity")
    return block_mats(operand, index)


def unit_mats(operand: str, index: int, n_blocks: int, block_mats: Callable[[str, int], list[torch.Tensor]],
              guards: Guards = DEFAULT_GUARDS, units: MatrixUnits | None = None) -> list[list[torch.Tensor]]:
    """What each unit of block `index` reduces: the block's matrices as one unit (block granularity),
    or each matrix alone (`units` given); `depth` is then the block's for each of its matrices and
    `share` the matrix's share of the block's parameters (1x1 float64 tensors)."""
    if units is None:
        return [operand_mats(operand, index, n_blocks, block_mats, guards)]
    counts = units.counts[index]
    if operand == SHARE:
        return [[torch.tensor([[count / sum(counts)]], dtype=torch.float64)] for count in counts]
    if operand == DEPTH:
        return [operand_mats(operand, index, n_blocks, block_mats, guards) for _ in counts]
    return [[matrix] for matrix in block_mats(operand, index)]


def prefix_values(node: Node, block_mats: Callable[[str, int], list[torch.Tensor]], n_blocks: int,
                  guards: Guards = DEFAULT_GUARDS, units: MatrixUnits | None = None) -> list[float]:
    """One value per block (per matrix with `units`) of a reduction prefix (operand -> pre1 -> pre2
    -> reduction).

    `block_mats(operand, i)` returns block i's matrices for an operand (wanda, magnitude, weight);
    `depth` and `share` are made here. Element-wise pre ops run on each matrix, block-level ones
    (pre.BLOCK) on the unit's list (search_space.pre.apply_chain).
    """
    pre2 = node.children[0]
    pre1 = pre2.children[0]
    operand = pre1.children[0].name
    reduce = reduction.OPS[op_of(node.name)]
    names = [op_of(pre1.name), op_of(pre2.name)]
    values = []
    for i in range(n_blocks):
        for mats in unit_mats(operand, i, n_blocks, block_mats, guards, units):
            values.append(float(reduce(pre.apply_chain(names, mats, guards), guards)))
    return values


def features_on(block_mats: Callable[[str, int], list[torch.Tensor]], n_blocks: int,
                units: MatrixUnits | None = None) -> Callable[..., list[float]]:
    """A prefix -> per-block (per-matrix) values function over local matrices (e.g. a session's):
    `features(node, guards=DEFAULT_GUARDS)`."""
    return lambda node, guards=DEFAULT_GUARDS: prefix_values(node, block_mats, n_blocks, guards, units)


class FeatureMemo:
    """Per-block values of each reduction prefix, computed once.

    `compute(node)` gives a prefix's per-block values: `prefix_values` over local matrices, or a
    request to a worker that holds the model (the driver of a distributed search holds none).
    `guards`: the guard constants `compute` uses; the steps after the memo (arithmetic, transforms,
    post, the sanitisers) use them too. Memos with other guards that share a store (a search's
    checkpointed features) need their own namespace. `units`: the model's matrices when `compute`
    gives one value per matrix (matrix granularity; the role offsets read their roles).
    """

    def __init__(self, compute: Callable[[Node], list[float]], namespace: str = "", guards: Guards = DEFAULT_GUARDS,
                 units: MatrixUnits | None = None):
        self.compute = compute
        self.namespace = namespace  # the model's name in a multi-model search: memos share one store
        self.guards = guards
        self.units = units
        self.values: dict[str, list[float]] = {}
        self.hits = 0

    @classmethod
    def over(cls, block_mats: Callable[[str, int], list[torch.Tensor]], n_blocks: int,
             guards: Guards = DEFAULT_GUARDS, units: MatrixUnits | None = None) -> "FeatureMemo":
        return cls(lambda node: prefix_values(node, block_mats, n_blocks, guards, units), guards=guards, units=units)

    def get(self, node: Node) -> torch.Tensor:
        key = self.namespace + prefix_key(node)
        if key in self.values:
            self.hits += 1
        else:
            self.values[key] = [float(v) for v in self.compute(node)]
        return torch.tensor(self.values[key], dtype=torch.float64)


DIV_EPS = 1e-12  # protected division: a divisor this small counts as zero (the quotient: guards.div_fallback)


def _arith(op: str, a: torch.Tensor, b: torch.Tensor, guards: Guards) -> torch.Tensor:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    vanishes = ~(b.abs() > DIV_EPS)  # nan counts as vanishing, too
    return torch.where(vanishes, torch.full_like(a, guards.div_fallback), a / torch.where(vanishes, 1.0, b))


def block_values(node: Node, memo: FeatureMemo) -> torch.Tensor:
    """Value of a BlockVec-or-later node (reduction, arithmetic, transform or post), with the
    memo's guards."""
    stage, op = stage_of(node.name), op_of(node.name)
    if stage == "red":
        return memo.get(node)
    if stage == "arith":
        return _arith(op, block_values(node.children[0], memo), block_values(node.children[1], memo), memo.guards)
    inner = block_values(node.children[0], memo)
    with torch.no_grad():
        if stage in ("tr1", "tr2"):
            return transform.OPS[op](inner, memo.guards)
        if stage == "post":
            return post.OPS[op](inner, memo.guards)
    raise ValueError(f"unexpected node {node.name}")


def importance_node(root: Node) -> Node:
    """The node whose values the map receives (after post-processing)."""
    return (root.children[0] if stage_of(root.name) == "role" else root).children[0]


def role_offsets(root: Node) -> dict[str, float]:
    """A per-matrix function's offset per role (its ROLE_OFFSETS root's constants, in ROLES order)."""
    return {role: const_value(child.name) for role, child in zip(ROLES, root.children[1:])}


def allocation_ratios(root: Node, memo: FeatureMemo, sizes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per-block ratios (per-matrix with a memo of `units`: `sizes` are then the matrices') of a
    whole function, with the memo's guards; raises InvalidFunction when it yields none."""
    if stage_of(root.name) == "role":
        if memo.units is None:
            raise ValueError("a per-matrix function (role offsets) runs at matrix granularity only")
        offsets = role_offsets(root)
        shifted = allocation_ratios(root.children[0], memo, sizes, sparsity) + torch.tensor(
            [offsets[role] for role in memo.units.flat_roles], dtype=torch.float64)
        return ratio_maps.rebalance(shifted, sizes, sparsity)  # one shift restores the budget exactly
    posted, constant = root.children
    guards = memo.guards
    raw = block_values(posted, memo)
    value = const_value(constant.name)
    kind = op_of(root.name)
    if kind == "owl":
        result = ratio_maps.owl_map(ratio_maps.sanitize(raw, guards), sizes, sparsity, value)
    elif kind == "alpha":
        result = ratio_maps.alpha_map(ratio_maps.sanitize(raw, guards), sizes, sparsity, value)
    elif kind == "dsa":  # DSA's own sanitiser (nan -> 0, +-inf -> -1), then its map
        result = ratio_maps.dsa_map(ratio_maps.sanitize_dsa(raw, guards), sizes, sparsity, value)
    else:
        raise ValueError(f"unexpected root {root.name}")
    if not torch.isfinite(result).all():
        raise InvalidFunction("non-finite ratios")
    return result

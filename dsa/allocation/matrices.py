"""Allocation inside the block: one sparsity ratio per prunable matrix.

A per-matrix allocation has one entry per decoder block, as a block allocation does, but each
entry is a mapping {linear name: ratio} (e.g. {"self_attn.q_proj": 0.62, ...}) instead of one
number. Every pruner reads an entry through `ratio_of`, so a number still means "all the block's
matrices at this ratio" and a mapping equal within each block prunes exactly as the number does.
The budget is over parameters: sum over matrices of numel * ratio == sparsity * total numel.

Roles name a matrix's job the same way across families: attention q, k, v, o and MLP gate, up,
down. LLaMA, Qwen2 and Gemma-3 name their linears `self_attn.{q,k,v,o}_proj` and
`mlp.{gate,up,down}_proj`; a family whose names do not map is refused in one line.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from dsa.core.constants import OWL_LAMBDA, OWL_M
from dsa.core.errors import UserError
from dsa.core.numerics import outlier_fraction
from evaluators.pruners.base import BlockRatio, ratio_of

from .ratios import DEFAULT_MAX_RATIO, owl_map

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
_ROLE_OF_LEAF = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
                 "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}

def role_of(linear_name: str) -> str:
    """The role of a block's linear by its module name (`mlp.down_proj` -> `down`)."""
    role = _ROLE_OF_LEAF.get(linear_name.rsplit(".", 1)[-1])
    if role is None:
        raise UserError(f"no matrix role for {linear_name!r}: per-matrix allocation knows the LLaMA, Qwen2 and "
                        f"Gemma-3 names ({', '.join(sorted(_ROLE_OF_LEAF))})")
    return role


def matrix_table(blocks) -> list[tuple[int, str, str, int]]:
    """(block index, linear name, role, parameter count) of every prunable matrix, block by block
    in the model's module order: the order of a flat per-matrix vector. `blocks`: evaluators'
    Block list (of a loaded model or of an architecture Layout)."""
    return [(block.index, name, role_of(name), layer.weight.numel())
            for block in blocks for name, layer in block.linears.items()]


@dataclass(frozen=True)
class MatrixUnits:
    """Each block's prunable matrices as a per-matrix function sees them: their linear names, roles
    and parameter counts, block by block in matrix_table's order (plain data: it travels to and
    from workers)."""

    names: tuple[tuple[str, ...], ...]
    roles: tuple[tuple[str, ...], ...]
    counts: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, blocks) -> "MatrixUnits":
        table = matrix_table(blocks)
        column = lambda k: tuple(tuple(row[k] for row in table if row[0] == block.index) for block in blocks)  # noqa: E731
        return cls(column(1), column(2), column(3))

    @classmethod
    def from_dict(cls, data: dict) -> "MatrixUnits":
        return cls(*(tuple(tuple(row) for row in data[key]) for key in ("names", "roles", "counts")))

    def as_dict(self) -> dict:
        return {"names": self.names, "roles": self.roles, "counts": self.counts}

    def entries(self, flat) -> list[dict[str, float]]:
        """A flat per-matrix vector as one {linear name: ratio} per block (what the pruners take)."""
        values = iter(torch.as_tensor(flat, dtype=torch.float64).reshape(-1).tolist())
        entries = [{name: next(values) for name in names} for names in self.names]
        if next(values, None) is not None:
            raise ValueError("more ratios than matrices")
        return entries

    @property
    def flat_roles(self) -> list[str]:
        return [role for roles in self.roles for role in roles]

    @property
    def sizes(self) -> torch.Tensor:
        """Each matrix's parameter count (float64): the budget's weights."""
        return torch.tensor([float(c) for counts in self.counts for c in counts], dtype=torch.float64)


def per_matrix(flat, blocks) -> list[dict[str, float]]:
    """A flat vector in matrix_table's order -> one {name: ratio} per block."""
    table = matrix_table(blocks)
    values = torch.as_tensor(flat, dtype=torch.float64).reshape(-1).tolist()
    if len(values) != len(table):
        raise UserError(f"got {len(values)} ratios for {len(table)} matrices")
    entries: list[dict[str, float]] = [{} for _ in blocks]
    for (index, name, _, _), value in zip(table, values):
        entries[index][name] = value
    return entries


def flatten(ratios: Sequence[BlockRatio], blocks) -> list[float]:
    """Any allocation (per block or per matrix) as a flat vector in matrix_table's order."""
    if len(ratios) != len(blocks):
        raise UserError(f"got {len(ratios)} ratios for {len(blocks)} blocks")
    return [ratio_of(ratios[index], name) for index, name, _, _ in matrix_table(blocks)]


def check_entries(ratios: Sequence[BlockRatio], blocks) -> None:
    """Every block's entry names exactly its own matrices, each ratio in [0, 1)."""
    for block, entry in zip(blocks, ratios):
        if isinstance(entry, Mapping) and set(entry) != set(block.linears):
            extra, missing = sorted(set(entry) - set(block.linears)), sorted(set(block.linears) - set(entry))
            raise UserError(f"block {block.index}: ratios for {extra or 'no other'} matrices, none for {missing or 'none'}")
    for value in flatten(ratios, blocks):
        if not 0.0 <= value < 1.0:
            raise UserError(f"ratio {value} is outside [0, 1)")


def parameter_sparsity(ratios: Sequence[BlockRatio], blocks) -> float:
    """The parameter-weighted global sparsity an allocation asks for."""
    table = matrix_table(blocks)
    counts = torch.tensor([count for *_, count in table], dtype=torch.float64)
    return float((counts * torch.tensor(flatten(ratios, blocks), dtype=torch.float64)).sum() / counts.sum())


def matrix_sizes(blocks) -> torch.Tensor:
    """Each matrix's parameter count (float64), in matrix_table's order: the budget's weights."""
    return torch.tensor([float(count) for *_, count in matrix_table(blocks)], dtype=torch.float64)


def expand(block_ratios, blocks) -> list[dict[str, float]]:
    """A block allocation as per-matrix entries, every matrix at its block's ratio (ATP's ramp at
    matrix granularity): prunes exactly as the block allocation does."""
    return [{name: float(block_ratios[block.index]) for name in block.linears} for block in blocks]


def uniform_matrix_ratios(blocks, sparsity: float) -> list[dict[str, float]]:
    return expand([float(sparsity)] * len(blocks), blocks)


def owl_matrix_ratios(block_scores, blocks, sparsity: float, m: float = OWL_M, lam: float = OWL_LAMBDA,
                      max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[list[dict[str, float]], torch.Tensor]:
    """OWL with its outlier ratio per matrix instead of per block: each matrix's fraction of Wanda
    scores above m * their mean, through OWL's map over all matrices, weighted by their sizes.
    `block_scores`: per block, its matrices' scores in the block's linear order. (OWL's code
    computes the ratio over the block's matrices together; this per-matrix form is ours.)"""
    metric = torch.tensor([outlier_fraction([scores], m=m) for mats in block_scores for scores in mats],
                          dtype=torch.float64)
    if metric.numel() != len(matrix_table(blocks)):
        raise ValueError(f"got scores of {metric.numel()} matrices for {len(matrix_table(blocks))}")
    return per_matrix(owl_map(metric, matrix_sizes(blocks), sparsity, lam, max_ratio), blocks), metric

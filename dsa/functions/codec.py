"""Genome node names, written and read in one place.

A node is named `<stage>_<op>` ('pre1_abslog', 'pre1_dsa_abslog', 'red_var', 'arith_sub', 'tr2_atan',
'post_rank', 'map_owl', 'map_dsa', 'role_offsets'), or is an operand ('wanda', 'magnitude', 'weight',
'depth', 'share'), or a constant ('lam_0p08', 'eps_0p3', 'off_m0p04': the value with '.' written 'p' and
'-' written 'm', as DEAP names must be identifiers).
"""
from __future__ import annotations

DEPTH = "depth"  # the operand holding each block's relative depth (made by the interpreter)
SHARE = "share"  # per-matrix functions: the matrix's share of its block's prunable parameters

STAGES = ("pre1", "pre2", "red", "arith", "tr1", "tr2", "post", "map", "role")
CONSTANT_KINDS = ("lam", "eps", "off")  # map lambda, map eps, a role's ratio offset
ROLE_OFFSETS = "role_offsets"  # the root of a per-matrix function: ratios + one offset per matrix role


def node_name(stage: str, op: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    return f"{stage}_{op}"


def split_name(name: str) -> tuple[str, str]:
    """'red_alpha_peak' -> ('red', 'alpha_peak'); 'lam_0p08' -> ('lam', '0p08'); 'wanda' -> ('operand', 'wanda')."""
    stage, sep, op = name.partition("_")
    if sep and (stage in STAGES or stage in CONSTANT_KINDS):
        return stage, op
    return "operand", name


def stage_of(name: str) -> str:
    return split_name(name)[0]


def op_of(name: str) -> str:
    return split_name(name)[1]


def const_name(kind: str, value: float) -> str:
    if kind not in CONSTANT_KINDS:
        raise ValueError(f"unknown constant kind {kind!r}")
    return f"{kind}_{value:g}".replace(".", "p").replace("-", "m")


def const_value(name: str) -> float:
    kind, text = split_name(name)
    if kind not in CONSTANT_KINDS:
        raise ValueError(f"{name!r} is not a constant")
    return float(text.replace("p", ".").replace("m", "-"))

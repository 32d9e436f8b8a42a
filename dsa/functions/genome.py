"""The genome: a DEAP strongly-typed GP tree that is always a valid allocation pipeline.

    map(post(transform2(transform1(reduction(pre2(pre1(operand)))))), constant)

Each stage position has its own type, so random generation, crossover (subtrees of equal type)
and node-replacement mutation can only ever produce pipelines of that shape. `noop` ops make the
0-2 pre-processing and transform ops of DSA. With `arithmetic=True`, block vectors can also be
joined by + - * / before the transforms (tree-shaped functions, beyond DSA's linear pipelines).
"""
from __future__ import annotations

import random

from deap import gp

from dsa.allocation.constants import ALPHA_EPS, OWL_LAMBDA
from search_space import post, pre, reduction, transform

from .codec import const_name, node_name, stage_of

OPERANDS = ("wanda", "magnitude", "weight")
LAMBDA_GRID = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25)
EPS_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)
ARITHMETIC = ("add", "sub", "mul", "div")
MAX_ARITHMETIC_DEPTH = 2  # at most 4 reductions joined: keeps functions readable and cheap


# Marker types, one per stage position.
class Operand: ...
class Pre1: ...
class Pre2: ...
class BlockVec: ...
class Tr1: ...
class Tr2: ...
class Posted: ...
class Ratios: ...
class Lam: ...
class Eps: ...


def build_pset(arithmetic: bool = False) -> gp.PrimitiveSetTyped:
    """The primitive set; primitives are names only (the interpreter in pipeline.py runs them)."""
    pset = gp.PrimitiveSetTyped("allocation", [], Ratios)
    stub = lambda *args: None  # noqa: E731 - never called: trees are interpreted, not compiled
    for name in pre.OPS:
        pset.addPrimitive(stub, [Operand], Pre1, name=node_name("pre1", name))
        pset.addPrimitive(stub, [Pre1], Pre2, name=node_name("pre2", name))
    for name in reduction.OPS:
        pset.addPrimitive(stub, [Pre2], BlockVec, name=node_name("red", name))
    if arithmetic:
        for name in ARITHMETIC:
            pset.addPrimitive(stub, [BlockVec, BlockVec], BlockVec, name=node_name("arith", name))
    for name in transform.OPS:
        pset.addPrimitive(stub, [BlockVec], Tr1, name=node_name("tr1", name))
        pset.addPrimitive(stub, [Tr1], Tr2, name=node_name("tr2", name))
    for name in post.OPS:
        pset.addPrimitive(stub, [Tr2], Posted, name=node_name("post", name))
    pset.addPrimitive(stub, [Posted, Lam], Ratios, name=node_name("map", "owl"))
    pset.addPrimitive(stub, [Posted, Eps], Ratios, name=node_name("map", "alpha"))
    for name in OPERANDS:
        pset.addTerminal(name, Operand, name=name)
    for value in LAMBDA_GRID:
        pset.addTerminal(value, Lam, name=const_name("lam", value))
    for value in EPS_GRID:
        pset.addTerminal(value, Eps, name=const_name("eps", value))
    return pset


def random_subtree(pset: gp.PrimitiveSetTyped, type_=Ratios, rng: random.Random | None = None,
                   arith_prob: float = 0.2, depth: int = 0) -> list:
    """A random valid subtree of `type_` in prefix order (also DEAP's `expr` for mutUniform)."""
    rng = rng or random
    if pset.terminals[type_] and not pset.primitives[type_]:
        return [rng.choice(pset.terminals[type_])]
    prims = pset.primitives[type_]
    if type_ is BlockVec:
        arith = [p for p in prims if stage_of(p.name) == "arith"]
        plain = [p for p in prims if stage_of(p.name) != "arith"]
        use_arith = arith and depth < MAX_ARITHMETIC_DEPTH and rng.random() < arith_prob
        prims = arith if use_arith else plain
        depth += 1 if use_arith else 0
    prim = rng.choice(prims)
    nodes = [prim]
    for arg in prim.args:
        nodes += random_subtree(pset, arg, rng, arith_prob, depth)
    return nodes


def tree_from_names(pset: gp.PrimitiveSetTyped, names: list[str]) -> gp.PrimitiveTree:
    """Rebuild a tree from its prefix list of node names (no eval: names are looked up)."""
    unknown = [n for n in names if n not in pset.mapping]
    if unknown:
        raise ValueError(f"unknown node names {unknown[:3]}")
    return gp.PrimitiveTree([pset.mapping[n] for n in names])


def names_of(tree) -> list[str]:
    return [node.name for node in tree]


def seed_names(method: str) -> list[str]:
    """The individuals whose ratios equal the baseline implementations."""
    chain = [node_name("post", "noop"), node_name("tr2", "noop"), node_name("tr1", "noop")]
    plain = [node_name("pre2", "noop"), node_name("pre1", "noop")]
    if method == "uniform":  # lambda = 0 makes OWL's map flat whatever the metric
        return [node_name("map", "owl"), *chain, node_name("red", "mean"), *plain, "wanda", const_name("lam", 0.0)]
    if method == "owl":
        return [node_name("map", "owl"), *chain, node_name("red", "outlier"), *plain, "wanda",
                const_name("lam", OWL_LAMBDA)]
    if method == "alphapruning":
        return [node_name("map", "alpha"), *chain, node_name("red", "alpha_peak"), *plain, "weight",
                const_name("eps", ALPHA_EPS)]
    raise ValueError(f"no seed for {method!r}")


SEEDS = ("uniform", "owl", "alphapruning")

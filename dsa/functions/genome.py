"""The genome: a DEAP strongly-typed GP tree that is always a valid allocation pipeline.

    map(post(transform2(transform1(reduction(pre2(pre1(operand)))))), constant)

Each stage position has its own type, so random generation, crossover (subtrees of equal type)
and node-replacement mutation can only ever produce pipelines of that shape. `noop` ops make the
0-2 pre-processing and transform ops of DSA. With `arithmetic=True`, block vectors can also be
joined by + - * / before the transforms (tree-shaped functions, beyond DSA's linear pipelines).

Maps: `map_owl` and `map_dsa` take a lambda (LAMBDA_GRID), `map_alpha` an eps (EPS_GRID).
Operands: the scores `wanda`, `magnitude`, the `weight`s, and `depth` (each block's relative
depth i / (L - 1), made by the interpreter: functions of depth transfer across models). A search
may keep to some of them (`operands=`): its random functions, mutations and seeds use only those.

Per-matrix functions (`granularity="matrix"`): the same pipeline runs on each prunable matrix
instead of each block (its pre-processing and reduction over that matrix's scores; `depth` is its
block's; the operand `share` is its share of the block's parameters), and the root adds one ratio
offset per matrix role (q, k, v, o, gate, up, down; OFFSET_GRID) before the budget is restored:

    role_offsets(map(...), off_q, off_k, off_v, off_o, off_gate, off_up, off_down)

Seeds (`seed_genomes()`, label -> names) are individuals whose ratios equal the baselines':
uniform, owl, alphapruning (eps by pruner), dsa-published (DSA's README function), dlp, and
atp@<lambda> for each lambda of ATP_LAMBDAS (ATP's depth ramp).
"""
from __future__ import annotations

import random

from deap import gp

from dsa.allocation.matrices import ROLES
from dsa.core.constants import ALPHA_EPS, ATP_LAMBDAS, DLP_ALPHA, DSA_LAMBDA, OWL_LAMBDA
from search_space import post, pre, reduction, transform

from .codec import DEPTH, ROLE_OFFSETS, SHARE, const_name, node_name, stage_of

OPERANDS = ("wanda", "magnitude", "weight", DEPTH)
MATRIX_OPERANDS = (*OPERANDS, SHARE)  # `share` exists only per matrix
GRANULARITIES = ("block", "matrix")
OFFSET_GRID = tuple(round(-0.12 + 0.02 * i, 2) for i in range(13))  # a role's ratio offset: -0.12 .. 0.12
LAMBDA_GRID = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25)
LAMBDA_MAPS = ("owl", "dsa")  # maps taking a lambda (the others take an eps)
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
class MatrixRatios: ...
class Offset: ...


def operands_for(granularity: str = "block") -> tuple:
    """Every operand a function at `granularity` may read."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return MATRIX_OPERANDS if granularity == "matrix" else OPERANDS


def check_operands(operands, granularity: str = "block") -> tuple:
    """`operands` as a tuple of known operand names (in MATRIX_OPERANDS' order); ValueError otherwise."""
    known = operands_for(granularity)
    unknown = [o for o in operands if o not in known]
    if unknown or not operands:
        raise ValueError(f"operands must be a non-empty subset of {known}, got {list(operands)!r:.80}")
    return tuple(o for o in known if o in operands)


def build_pset(arithmetic: bool = False, operands=OPERANDS, granularity: str = "block") -> gp.PrimitiveSetTyped:
    """The primitive set; primitives are names only (the interpreter in pipeline.py runs them).
    Only `operands` are terminals, so every function it builds reads those alone. At matrix
    granularity the root is ROLE_OFFSETS over a block-shaped pipeline and the role offsets."""
    operands = check_operands(operands, granularity)
    pset = gp.PrimitiveSetTyped("allocation", [], MatrixRatios if granularity == "matrix" else Ratios)
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
    pset.addPrimitive(stub, [Posted, Lam], Ratios, name=node_name("map", "dsa"))
    for name in operands:
        pset.addTerminal(name, Operand, name=name)
    if granularity == "matrix":
        pset.addPrimitive(stub, [Ratios] + [Offset] * len(ROLES), MatrixRatios, name=ROLE_OFFSETS)
        for value in OFFSET_GRID:
            pset.addTerminal(value, Offset, name=const_name("off", value))
    for value in LAMBDA_GRID:
        pset.addTerminal(value, Lam, name=const_name("lam", value))
    for value in EPS_GRID:
        pset.addTerminal(value, Eps, name=const_name("eps", value))
    return pset


def random_subtree(pset: gp.PrimitiveSetTyped, type_=None, rng: random.Random | None = None,
                   arith_prob: float = 0.2, depth: int = 0) -> list:
    """A random valid subtree of `type_` (default: the pset's root type) in prefix order (also
    DEAP's `expr` for mutUniform)."""
    rng = rng or random
    type_ = pset.ret if type_ is None else type_
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


def _pipeline(mapping: str, operand: str, reduce: str, constant: str, pre_ops=("noop", "noop"),
              transforms=("noop", "noop"), post_op: str = "noop") -> list[str]:
    """Prefix names of map(post(tr2(tr1(red(pre2(pre1(operand)))))), constant)."""
    return [node_name("map", mapping), node_name("post", post_op), node_name("tr2", transforms[1]),
            node_name("tr1", transforms[0]), node_name("red", reduce), node_name("pre2", pre_ops[1]),
            node_name("pre1", pre_ops[0]), operand, constant]


def seed_names(method: str, lam: float | None = None, eps: float | None = None) -> list[str]:
    """The individual whose ratios equal a baseline implementation's.

    `method` is a label of seed_genomes() ('atp@0.08' carries its lambda) or a method name:
    - uniform: OWL's map with lambda 0 (flat whatever the metric);
    - owl: outlier fraction (M = 5), OWL's map, lambda OWL_LAMBDA;
    - alphapruning: mean PL_Alpha_Hill (peak) of the weights, AlphaPruning's map, `eps`
      (default ALPHA_EPS; its scripts: 0.2 with Wanda and SparseGPT, 0.3 with magnitude);
    - dsa-published: DSA's README function W:(ABSLOG)-(VAR)-(ATAN,ASIN) as DSA's code runs it:
      dsa_abslog, var_unbiased, atan, dsa_asin, DSA's sanitiser and map, lambda DSA_LAMBDA;
    - dlp: mean Wanda score of the block (DLP's public code path), DSA's map (DLP's formula),
      lambda DLP_ALPHA;
    - atp: relative depth through DSA's map with lambda `lam` (required): ratio_i =
      S + 2 * lam * (depth_i - mean_w(depth)), an arithmetic progression in depth.
    """
    if "@" in method:
        method, _, text = method.partition("@")
        if method != "atp" or lam is not None:
            raise ValueError(f"no seed for {method + '@' + text!r}")
        lam = float(text)
    if method == "uniform":  # lambda = 0 makes OWL's map flat whatever the metric
        return _pipeline("owl", "wanda", "mean", const_name("lam", 0.0))
    if method == "owl":
        return _pipeline("owl", "wanda", "outlier", const_name("lam", OWL_LAMBDA))
    if method == "alphapruning":
        eps = ALPHA_EPS if eps is None else eps
        if not any(abs(eps - g) < 1e-9 for g in EPS_GRID):
            raise ValueError(f"eps {eps} is not on the grid {EPS_GRID}")
        return _pipeline("alpha", "weight", "alpha_peak", const_name("eps", _on_grid(eps, EPS_GRID)))
    if method == "dsa-published":
        return _pipeline("dsa", "wanda", "var_unbiased", const_name("lam", DSA_LAMBDA),
                         pre_ops=("dsa_abslog", "noop"), transforms=("atan", "dsa_asin"))
    if method == "dlp":
        return _pipeline("dsa", "wanda", "mean", const_name("lam", DLP_ALPHA))
    if method == "atp":
        if lam is None or not any(abs(lam - g) < 1e-9 for g in LAMBDA_GRID):
            raise ValueError(f"the atp seed needs a lambda on the grid {LAMBDA_GRID}, got {lam}")
        return _pipeline("dsa", DEPTH, "mean", const_name("lam", _on_grid(lam, LAMBDA_GRID)))
    raise ValueError(f"no seed for {method!r}")


def _on_grid(value: float, grid) -> float:
    return min(grid, key=lambda g: abs(g - value))


def atp_label(lam: float) -> str:
    return f"atp@{lam:g}"


def at_matrix_granularity(names: list[str], offsets=None) -> list[str]:
    """A block-shaped function's names as a per-matrix function: its pipeline run per matrix, with
    `offsets` (role -> offset on OFFSET_GRID; default none) added to its ratios."""
    offsets = offsets or {}
    return [ROLE_OFFSETS, *names, *(const_name("off", offsets.get(role, 0.0)) for role in ROLES)]


def seed_genomes(alpha_eps: float = ALPHA_EPS, atp_lambdas=ATP_LAMBDAS, operands=OPERANDS,
                 granularity: str = "block") -> dict[str, list[str]]:
    """Every seed, label -> prefix names: uniform, owl, alphapruning (with `alpha_eps`),
    dsa-published, dlp, and atp@<lam> for each lambda of `atp_lambdas`; at matrix granularity
    each run per matrix with no role offsets (uniform and ATP's ramp then equal their block forms).

    With fewer `operands` the seeds reading another operand are left out; uniform (flat whatever
    it reads) then reads the first operand allowed."""
    operands = check_operands(operands, granularity)
    seeds = {method: seed_names(method) for method in ("uniform", "owl")}
    seeds["alphapruning"] = seed_names("alphapruning", eps=alpha_eps)
    seeds["dsa-published"] = seed_names("dsa-published")
    seeds["dlp"] = seed_names("dlp")
    for lam in atp_lambdas:
        seeds[atp_label(lam)] = seed_names("atp", lam)
    if "wanda" not in operands:
        seeds["uniform"] = _pipeline("owl", operands[0], "mean", const_name("lam", 0.0))
    wrap = at_matrix_granularity if granularity == "matrix" else list
    return {label: wrap(names) for label, names in seeds.items()
            if all(name in operands for name in names if name in MATRIX_OPERANDS)}


SEEDS = tuple(seed_genomes())  # labels; seed_names(label) gives each one's names

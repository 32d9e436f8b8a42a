"""Allocation functions as data: JSON <-> genome names, validation, and the sympy formula.

    {"format": "dsa-function", "version": 1,
     "importance": {"operand": "wanda", "pre": ["abslog"], "reduction": "var"},
     "transform": ["atan", "asin"], "post": "noop", "map": {"kind": "owl", "lambda": 0.08}}

"importance" may also be {"op": "sub", "args": [importance, importance]} (tree-shaped functions).
Files are validated field by field and never executed.
"""
from __future__ import annotations

import math

import sympy
from sympy.core.function import AppliedUndef

from search_space import post, pre, reduction, transform

from .codec import const_name, const_value, node_name, op_of, stage_of
from .genome import ARITHMETIC, EPS_GRID, LAMBDA_GRID, MAX_ARITHMETIC_DEPTH, OPERANDS

FORMAT = "dsa-function"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024


class FunctionError(ValueError):
    """A function file that is not a valid allocation function; the message says why."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise FunctionError(message)


def _show(value, limit: int = 40) -> str:
    """repr() cut to `limit` characters: messages stay one short line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name_in(value, names, what: str) -> str:
    """`value` if it is one of the known op names (strings only: no hashing of odd JSON types)."""
    _expect(isinstance(value, str) and value in names, f"unknown {what} {_show(value)}")
    return value


def _op_list(value, registry: dict, stage: str) -> list[str]:
    _expect(isinstance(value, list) and len(value) <= 2, f"{stage} must be a list of at most 2 op names")
    for name in value:
        _name_in(name, registry, f"{stage} op")
    return [n for n in value if n != "noop"]


def _importance_names(node, depth: int = 0) -> list[str]:
    _expect(isinstance(node, dict), "importance must be an object")
    if "op" in node:
        _expect(depth < MAX_ARITHMETIC_DEPTH, f"importance nests deeper than {MAX_ARITHMETIC_DEPTH} arithmetic ops")
        _expect(set(node) == {"op", "args"}, "arithmetic node takes exactly 'op' and 'args'")
        _name_in(node["op"], ARITHMETIC, "arithmetic op")
        _expect(isinstance(node["args"], list) and len(node["args"]) == 2, "arithmetic needs two args")
        return [node_name("arith", node["op"]), *_importance_names(node["args"][0], depth + 1),
                *_importance_names(node["args"][1], depth + 1)]
    _expect(set(node) == {"operand", "pre", "reduction"}, "importance takes 'operand', 'pre', 'reduction'")
    _name_in(node["operand"], OPERANDS, "operand")
    _name_in(node["reduction"], reduction.OPS, "reduction")
    ops = _op_list(node["pre"], pre.OPS, "pre") + ["noop", "noop"]
    return [node_name("red", node["reduction"]), node_name("pre2", ops[1]), node_name("pre1", ops[0]), node["operand"]]


def _constant(mapping) -> str:
    shapes = ({"kind", "lambda"}, {"kind", "eps"})
    _expect(isinstance(mapping, dict) and mapping.get("kind") in ("owl", "alpha")
            and set(mapping) == shapes[mapping["kind"] == "alpha"],
            "map must be {'kind': 'owl', 'lambda': x} or {'kind': 'alpha', 'eps': x}")
    kind = mapping["kind"]
    value = mapping["lambda" if kind == "owl" else "eps"]
    _expect(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            "map constant must be a finite number")
    grid = LAMBDA_GRID if kind == "owl" else EPS_GRID
    _expect(any(abs(value - g) < 1e-9 for g in grid), f"map constant {value} is not on the grid {grid}")
    return const_name("lam" if kind == "owl" else "eps", min(grid, key=lambda g: abs(g - value)))


def to_names(data) -> list[str]:
    """Validate a function document and return the genome's prefix list of names."""
    _expect(isinstance(data, dict), "a function file holds one JSON object")
    _expect(data.get("format") == FORMAT, f"'format' must be {FORMAT!r}")
    version = data.get("version")
    _expect(type(version) is int and version == VERSION,
            f"unsupported version {_show(version)} (this tool reads {VERSION})")
    allowed = {"format", "version", "importance", "transform", "post", "map", "meta"}
    _expect(set(data) <= allowed, f"unknown fields {_show(sorted(set(data) - allowed), 80)}")
    _expect(isinstance(data.get("meta", {}), dict), "meta must be an object")
    transforms = _op_list(data.get("transform", []), transform.OPS, "transform") + ["noop", "noop"]
    _name_in(data.get("post", "noop"), post.OPS, "post op")
    mapping = data.get("map")
    constant = _constant(mapping)
    return [node_name("map", mapping["kind"]), node_name("post", data.get("post", "noop")),
            node_name("tr2", transforms[1]), node_name("tr1", transforms[0]),
            *_importance_names(data.get("importance")), constant]


def from_root(root) -> dict:
    """Genome (parsed pipeline.Node) -> function document."""
    def importance(node):
        if stage_of(node.name) == "arith":
            return {"op": op_of(node.name), "args": [importance(c) for c in node.children]}
        pre2 = node.children[0]
        pre1 = pre2.children[0]
        ops = [op_of(pre1.name), op_of(pre2.name)]
        return {"operand": pre1.children[0].name, "pre": [o for o in ops if o != "noop"],
                "reduction": op_of(node.name)}

    posted, constant = root.children
    tr2 = posted.children[0]
    tr1 = tr2.children[0]
    kind = op_of(root.name)
    return {"format": FORMAT, "version": VERSION, "importance": importance(tr1.children[0]),
            "transform": [o for o in (op_of(tr1.name), op_of(tr2.name)) if o != "noop"],
            "post": op_of(posted.name),
            "map": {"kind": kind, ("lambda" if kind == "owl" else "eps"): const_value(constant.name)}}


def importance_expr(data) -> sympy.Expr:
    """The per-block importance as one sympy expression of the element score x (or W)."""
    def node_expr(node):
        if "op" in node:
            a, b = (node_expr(n) for n in node["args"])
            return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[node["op"]]
        expr = sympy.Symbol("W" if node["operand"] == "weight" else "x")
        for name in node["pre"]:
            expr = pre.OPS[name].sym(expr)
        return reduction.OPS[node["reduction"]].sym(expr)

    expr = node_expr(data["importance"])
    for name in data.get("transform", []):
        expr = transform.OPS[name].sym(expr)
    return post.OPS[data.get("post", "noop")].sym(expr)


OPERAND_MEANING = {"wanda": "x = Wanda score |W_ij| * ||X_j||", "magnitude": "x = magnitude |W_ij|",
                   "weight": "W = the weight matrices of the block"}


def _operands(node) -> set[str]:
    if "op" in node:
        return set().union(*(_operands(n) for n in node["args"]))
    return {node["operand"]}


# What every undefined function of the formulas returns: all are real (block scalars of real
# scores, element-wise maps of reals); these are also never negative.
_NONNEGATIVE = {"var", "l2", "entropy", "rank", "outlier", "minmax", "softmax"}


def real_form(expr: sympy.Expr) -> sympy.Expr:
    """`expr` with the facts sympy needs to simplify it: x and W are real and every undefined
    function (mean, var, zscore, rank, ...) is real-valued, var, l2, entropy, rank, outlier,
    minmax and softmax also non-negative. Then e.g. log|exp(v)| = v and sqrt|var(x)| = std."""
    expr = expr.subs({sympy.Symbol("x"): sympy.Symbol("x", real=True), sympy.Symbol("W"): sympy.Symbol("W", real=True)})

    def assume(call):
        name = call.func.__name__
        facts = {"nonnegative": True} if name in _NONNEGATIVE else {"real": True}
        return sympy.Function(name, **facts)(*call.args)

    return sympy.refine(expr.replace(lambda e: isinstance(e, AppliedUndef), assume))


def simplified_expr(data) -> sympy.Expr:
    """The importance expression simplified under real_form's assumptions."""
    return sympy.simplify(real_form(importance_expr(data)))


def map_of(data) -> tuple[str, float]:
    mapping = data["map"]
    return mapping["kind"], float(mapping["lambda" if mapping["kind"] == "owl" else "eps"])


def same_formula(a, b) -> tuple[bool, str]:
    """Whether two validated functions are the same formula, and how that was decided.

    The map (kind and constant) must match; the importance expressions must be identical
    op by op, identical as formulas, or algebraically equal (their difference simplifies to 0
    under real_form's assumptions).
    """
    if map_of(a) != map_of(b):
        return False, f"different maps: {map_of(a)} vs {map_of(b)}"
    if to_names(a) == to_names(b):
        return True, "identical ops"
    ea, eb = importance_expr(a), importance_expr(b)
    if ea == eb:
        return True, "different ops, identical formula"
    ra, rb = real_form(ea), real_form(eb)
    if ra == rb or sympy.simplify(ra - rb) == 0:
        return True, "different ops, algebraically equal formulas"
    return False, "different importance formulas"


def describe(data) -> str:
    """Human-readable formula: the importance expression, what its symbols are, and the map."""
    expr = importance_expr(data)
    mapping = data["map"]
    if mapping["kind"] == "owl":
        map_text = f"ratios = OWL map of importance, lambda = {mapping['lambda']} (more important -> less pruning)"
    else:
        map_text = f"ratios = AlphaPruning map of importance, eps = {mapping['eps']} (larger -> more pruning)"
    symbols = "; ".join(OPERAND_MEANING[o] for o in sorted(_operands(data["importance"])))
    simple = simplified_expr(data)
    return "\n".join([f"importance = {expr}", "", sympy.pretty(expr), "", f"LaTeX: {sympy.latex(expr)}",
                      f"simplified (x, W and reductions real) = {simple}",
                      f"where {symbols}; reductions run over all of a block's matrices", map_text])

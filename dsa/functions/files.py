"""Allocation functions as data: JSON <-> genome names, validation, and the sympy formula.

    {"format": "dsa-function", "version": 1,
     "importance": {"operand": "wanda", "pre": ["dsa_abslog"], "reduction": "var_unbiased"},
     "transform": ["atan", "dsa_asin"], "post": "noop", "map": {"kind": "dsa", "lambda": 0.08}}

(DSA's published function, DSA_PUBLISHED below.) "importance" may also be
{"op": "sub", "args": [importance, importance]} (tree-shaped functions). "map" is
{"kind": "owl" | "dsa", "lambda": x} or {"kind": "alpha", "eps": x}. Operands: wanda,
magnitude, weight, depth. Files are validated field by field and never executed.

A per-matrix function adds "roles": {"q": b_q, "k": ..., "down": b_down}, one ratio offset per
matrix role: its pipeline then runs on each prunable matrix (depth is its block's; the operand
`share` is its share of the block's parameters) and ratio = map(importance) + b_role, the budget
restored by one shift.
"""
from __future__ import annotations

import math

import sympy
from sympy.core.function import AppliedUndef

from search_space import post, pre, reduction, transform

from dsa.allocation.matrices import ROLES

from .codec import DEPTH, SHARE, const_name, const_value, node_name, op_of, stage_of
from .genome import ARITHMETIC, LAMBDA_MAPS, MATRIX_OPERANDS, MAX_ARITHMETIC_DEPTH, at_matrix_granularity

FORMAT = "dsa-function"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024
MAX_NOTE_CHARS = 4000  # a free-text note of where a function came from
MAP_KINDS = (*LAMBDA_MAPS, "alpha")
# lambda: ratios S + 2 lambda (minmax - mean) stay a spread around S; eps: AlphaPruning's [S - eps, S + eps].
LEGAL_RANGE = {"lambda": (0.0, 0.5), "eps": (0.0, 1.0)}
OFFSET_RANGE = (-0.5, 0.5)  # a role's ratio offset

# DSA's published function (lliai/DSA README.md: --graph_string "W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7)",
# prune method wanda_owl_search, --Lamda 0.08 by default) in this project's ops, as DSA's code
# runs it: W is the block's Wanda scores |W_ij| * sqrt(scaler_row_j) of all its linear layers,
# concatenated and flattened (lib/prune_all.py:2030-2031, 2060); ABSLOG sets 0 to 1 then takes
# ln|x| (lib/autolayer.py:35-45); VAR is torch.var, unbiased (l. 357); ATAN, ASIN are torch.atan,
# torch.asin on the scalar (l. 368-370; nan outside [-1, 1]); nan -> 0, +-inf -> -1 (l. 454-458);
# then DSA's map (lib/prune_all.py:2073-2088). The trailing "(7)" is DSA's unused LAMBDA field.
DSA_PUBLISHED = {"format": FORMAT, "version": VERSION,
                 "importance": {"operand": "wanda", "pre": ["dsa_abslog"], "reduction": "var_unbiased"},
                 "transform": ["atan", "dsa_asin"], "post": "noop", "map": {"kind": "dsa", "lambda": 0.08}}


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
    _name_in(node["operand"], MATRIX_OPERANDS, "operand")
    _name_in(node["reduction"], reduction.OPS, "reduction")
    ops = _op_list(node["pre"], pre.OPS, "pre") + ["noop", "noop"]
    return [node_name("red", node["reduction"]), node_name("pre2", ops[1]), node_name("pre1", ops[0]), node["operand"]]


def _finite_number(value, what: str) -> float:
    """A JSON number as a float, checked before any arithmetic: not a boolean, a string of digits
    or an integer too large for a float (10**400 would raise OverflowError in math)."""
    _expect(type(value) in (int, float), f"{what} must be a number, not {_show(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise FunctionError(f"{what} {_show(value)} is too large")
    _expect(math.isfinite(value), f"{what} must be a finite number")
    return value


def _constant_key(kind: str) -> str:
    """The field holding a map's constant: 'lambda' (owl, dsa) or 'eps' (alpha)."""
    return "lambda" if kind in LAMBDA_MAPS else "eps"


def _constant(mapping) -> str:
    _expect(isinstance(mapping, dict) and isinstance(mapping.get("kind"), str) and mapping["kind"] in MAP_KINDS
            and set(mapping) == {"kind", _constant_key(mapping["kind"])},
            "map must be {'kind': 'owl' or 'dsa', 'lambda': x} or {'kind': 'alpha', 'eps': x}")
    kind = mapping["kind"]
    value = _finite_number(mapping[_constant_key(kind)], "map constant")
    # Any constant of the map's legal range: the search's grid is its mutation step, not a rule for files.
    low, high = LEGAL_RANGE[_constant_key(kind)]
    _expect(low <= value <= high, f"map {_constant_key(kind)} {value} is outside [{low}, {high}]")
    return _constant_name("lam" if kind in LAMBDA_MAPS else "eps", value, "map constant")


def _constant_name(kind: str, value: float, what: str) -> str:
    name = const_name(kind, value)
    _expect(const_value(name) == value, f"{what} {value}: give at most 6 significant digits")
    return name


def _role_offsets(roles) -> dict[str, float]:
    """A per-matrix function's "roles": one offset per role, each in OFFSET_RANGE."""
    _expect(isinstance(roles, dict) and set(roles) == set(ROLES),
            f"roles must be an object with one offset for each of {', '.join(ROLES)}")
    offsets = {role: _finite_number(roles[role], f"role offset {role}") for role in ROLES}
    low, high = OFFSET_RANGE
    for role, value in offsets.items():
        _expect(low <= value <= high, f"role offset {role} {value} is outside [{low}, {high}]")
    return offsets


def is_matrix_function(data) -> bool:
    """Whether a validated function sets one ratio per matrix (it has role offsets)."""
    return "roles" in data


def to_names(data) -> list[str]:
    """Validate a function document and return the genome's prefix list of names."""
    _expect(isinstance(data, dict), "a function file holds one JSON object")
    _expect(data.get("format") == FORMAT, f"'format' must be {FORMAT!r}")
    version = data.get("version")
    _expect(type(version) is int and version == VERSION,
            f"unsupported version {_show(version)} (this tool reads {VERSION})")
    allowed = {"format", "version", "importance", "transform", "post", "map", "meta", "note", "roles"}
    _expect(set(data) <= allowed, f"unknown fields {_show(sorted(set(data) - allowed), 80)}")
    _expect(isinstance(data.get("meta", {}), dict), "meta must be an object")
    _expect(isinstance(data.get("note", ""), str) and len(data.get("note", "")) <= MAX_NOTE_CHARS,
            f"note must be a text of at most {MAX_NOTE_CHARS} characters")
    transforms = _op_list(data.get("transform", []), transform.OPS, "transform") + ["noop", "noop"]
    _name_in(data.get("post", "noop"), post.OPS, "post op")
    mapping = data.get("map")
    constant = _constant(mapping)
    names = [node_name("map", mapping["kind"]), node_name("post", data.get("post", "noop")),
             node_name("tr2", transforms[1]), node_name("tr1", transforms[0]),
             *_importance_names(data.get("importance")), constant]
    if "roles" not in data:
        _expect(SHARE not in names, "the share operand needs a per-matrix function (add 'roles')")
        return names
    offsets = _role_offsets(data["roles"])
    for role, value in offsets.items():
        _constant_name("off", value, f"role offset {role}")
    return at_matrix_granularity(names, offsets)


def from_root(root) -> dict:
    """Genome (parsed pipeline.Node) -> function document."""
    if stage_of(root.name) == "role":
        return {**from_root(root.children[0]),
                "roles": {role: const_value(child.name) for role, child in zip(ROLES, root.children[1:])}}

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
            "map": {"kind": kind, _constant_key(kind): const_value(constant.name)}}


def importance_expr(data) -> sympy.Expr:
    """The per-block importance as one sympy expression of the element score x (or W)."""
    def node_expr(node):
        if "op" in node:
            a, b = (node_expr(n) for n in node["args"])
            return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[node["op"]]
        expr = sympy.Symbol(OPERAND_SYMBOL.get(node["operand"], "x"))
        for name in node["pre"]:
            expr = pre.OPS[name].sym(expr)
        return reduction.OPS[node["reduction"]].sym(expr)

    expr = node_expr(data["importance"])
    for name in data.get("transform", []):
        expr = transform.OPS[name].sym(expr)
    return post.OPS[data.get("post", "noop")].sym(expr)


OPERAND_SYMBOL = {"weight": "W", DEPTH: "d", SHARE: "s"}  # others: x
OPERAND_MEANING = {"wanda": "x = Wanda score |W_ij| * ||X_j||", "magnitude": "x = magnitude |W_ij|",
                   "weight": "W = the weight matrices of the block",
                   DEPTH: "d = the block's relative depth i / (L - 1) (0 first block, 1 last)",
                   SHARE: "s = the matrix's share of its block's prunable parameters"}


def _operands(node) -> set[str]:
    if "op" in node:
        return set().union(*(_operands(n) for n in node["args"]))
    return {node["operand"]}


# What every undefined function of the formulas returns: all are real (block scalars of real
# scores, element-wise maps of reals); these are also never negative.
_NONNEGATIVE = {"var", "var_unbiased", "l2", "entropy", "rank", "outlier", "minmax", "dsa_minmax", "softmax"}


def real_form(expr: sympy.Expr) -> sympy.Expr:
    """`expr` with the facts sympy needs to simplify it: x and W are real, d (depth) is
    non-negative, and every undefined function (mean, var, zscore, rank, ...) is real-valued,
    those in _NONNEGATIVE (var, l2, minmax, ...) also non-negative. Then e.g. log|exp(v)| = v
    and sqrt|var(x)| = std."""
    expr = expr.subs({sympy.Symbol("x"): sympy.Symbol("x", real=True), sympy.Symbol("W"): sympy.Symbol("W", real=True),
                      sympy.Symbol("d"): sympy.Symbol("d", nonnegative=True)})

    def assume(call):
        name = call.func.__name__
        facts = {"nonnegative": True} if name in _NONNEGATIVE else {"real": True}
        return sympy.Function(name, **facts)(*call.args)

    return sympy.refine(expr.replace(lambda e: isinstance(e, AppliedUndef), assume))


def _block_functions() -> frozenset[str]:
    """Names of the undefined functions that stand for a whole block's or vector's value
    (reductions: mean, var, ...; vector post ops: softmax, rank)."""
    x = sympy.Symbol("x")
    return frozenset(f.func.__name__ for registry in (reduction.OPS, post.OPS) for op in registry.values()
                     for f in sympy.sympify(op.sym(x)).atoms(AppliedUndef))


_BLOCK_FUNCTIONS = _block_functions()


def _simplify(expr: sympy.Expr) -> sympy.Expr:
    """sympy.simplify that keeps every reduction call whole: its argument (an expression of the
    element x) is simplified on its own, then the call stands as one real symbol (non-negative
    when the call is) while the rest is simplified. Plain simplify folds a Piecewise element op
    (dsa_abslog, dsa_log) out of the reduction over the elements, which is wrong:
    var(Piecewise((0, x = 0), (log|x|, True))) is not Piecewise((var(0), x = 0), (var(log|x|), True))."""
    symbols: dict[sympy.Expr, sympy.Dummy] = {}

    def opaque(call):
        inner = call.func(*(sympy.simplify(a) for a in call.args))
        facts = {"real": True, **({"nonnegative": True} if inner.is_nonnegative else {})}
        return symbols.setdefault(inner, sympy.Dummy(call.func.__name__, **facts))

    hidden = expr.replace(lambda e: isinstance(e, AppliedUndef) and e.func.__name__ in _BLOCK_FUNCTIONS, opaque)
    out = sympy.simplify(hidden)
    back = {symbol: inner for inner, symbol in symbols.items()}
    while back and out.has(*back):  # nested calls (rank of a mean) come back in turn
        out = out.xreplace(back)
    return out


def simplified_expr(data) -> sympy.Expr:
    """The importance expression simplified under real_form's assumptions."""
    return _simplify(real_form(importance_expr(data)))


def map_of(data) -> tuple[str, float]:
    mapping = data["map"]
    return mapping["kind"], float(mapping[_constant_key(mapping["kind"])])


def with_map_constant(data, value: float) -> dict:
    """A copy of a validated function with its map's constant (lambda or eps) set to `value`:
    the same shape, another amplitude. ValueError (FunctionError) when `value` is outside the map's range."""
    kind = data["map"]["kind"]
    tuned = {**data, "map": {"kind": kind, _constant_key(kind): value}}
    to_names(tuned)
    return tuned


def same_formula(a, b) -> tuple[bool, str]:
    """Whether two validated functions are the same formula, and how that was decided.

    The map (kind and constant) must match; the importance expressions must be identical
    op by op, identical as formulas, or algebraically equal (their difference simplifies to 0
    under real_form's assumptions).
    """
    if map_of(a) != map_of(b):
        return False, f"different maps: {map_of(a)} vs {map_of(b)}"
    if a.get("roles") != b.get("roles"):
        return False, "different role offsets"
    if to_names(a) == to_names(b):
        return True, "identical ops"
    ea, eb = importance_expr(a), importance_expr(b)
    if ea == eb:
        return True, "different ops, identical formula"
    ra, rb = real_form(ea), real_form(eb)
    if ra == rb or _simplify(ra - rb) == 0:
        return True, "different ops, algebraically equal formulas"
    return False, "different importance formulas"


def describe(data) -> str:
    """Human-readable formula: the importance expression, what its symbols are, and the map."""
    expr = importance_expr(data)
    mapping = data["map"]
    if mapping["kind"] == "owl":
        map_text = f"ratios = OWL map of importance, lambda = {mapping['lambda']} (more important -> less pruning)"
    elif mapping["kind"] == "dsa":
        map_text = (f"ratios = DSA map of importance, lambda = {mapping['lambda']} (larger importance -> MORE "
                    "pruning: ratio = S + 2 lambda (minmax(v) - mean(minmax(v))); nan -> 0, +-inf -> -1 first)")
    else:
        map_text = f"ratios = AlphaPruning map of importance, eps = {mapping['eps']} (larger -> more pruning)"
    symbols = "; ".join(OPERAND_MEANING[o] for o in sorted(_operands(data["importance"])))
    simple = simplified_expr(data)
    lines = [f"importance = {expr}", "", sympy.pretty(expr), "", f"LaTeX: {sympy.latex(expr)}",
             f"simplified (x, W and reductions real) = {simple}"]
    if not is_matrix_function(data):
        return "\n".join([*lines, f"where {symbols}; reductions run over all of a block's matrices", map_text])
    ratio = sympy.Symbol("r") + sympy.Symbol("b_role")
    offsets = ", ".join(f"{role} {value:+g}" for role, value in data["roles"].items())
    return "\n".join([*lines, f"where {symbols}; per matrix: reductions run over each matrix's own elements",
                       map_text.replace("ratios = ", "r = ", 1) + ", over the matrices weighted by their sizes",
                       f"ratio = {ratio} (then one shift restores the budget), b_role by the matrix's role: {offsets}"])

"""The package layering README.md describes: no module imports from a layer above its own."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {"dsa.core": 0, "evaluators": 1, "dsa.allocation": 2, "search_space": 3, "dsa.functions": 4,
        "dsa.protocol": 4.5,  # how results are measured: below the pool (it asks through an interface)
        "dsa.distributed": 5, "dsa.outputs": 5, "dsa.search": 6,
        "dsa": 6.5,  # the package's own modules: dsa/__init__.py (lazy) and the Python API, dsa/api.py
        "cli": 7}


def layer_of(module: str) -> str | None:
    for layer in sorted(RANK, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def imports_of(path: Path, package: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            else:
                found.add(node.module)
    return found


def modules():
    for path in ROOT.glob("*.py"):
        yield path, "cli", "cli"
    for path in [*(ROOT / "bench").glob("*.py"), *(ROOT / "experiments").glob("*/*.py")]:
        yield path, "cli", "cli"  # scripts on the top layer, as search.py and apply.py
    for top in ("evaluators", "search_space", "dsa"):
        for path in (ROOT / top).rglob("*.py"):
            package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
            yield path, package, layer_of(package) or layer_of(package + ".x")


def test_no_import_reaches_a_higher_layer():
    wrong = []
    for path, package, layer in modules():
        if layer is None:
            continue
        for name in imports_of(path, package):
            target = layer_of(name)
            if target and RANK[target] > RANK[layer]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong


WORKER_BENCHES = ("workers.py", "lost_node.py")  # the benchmarks of the workers themselves


def test_apply_benches_and_experiments_do_not_use_the_worker_module():
    scripts = [path for path, _, layer in modules() if layer == "cli"]  # search.py, apply.py, bench/, experiments/
    users = [path.name for path in scripts
             if path.name not in WORKER_BENCHES and any("dsa.distributed" in n for n in imports_of(path, "cli"))]
    assert not users, users



# Fault injection in a benchmark of the workers: loses a node mid-search by wrapping RayPool.map_routed,
# restored in a finally (tests do the same through pytest's monkeypatch, which restores by itself).
PATCHING_ALLOWED = ("lost_node.py",)


def patches_of(source: str) -> list[str]:
    """Where a module may change another module's globals: `setattr`/`delattr` on anything but
    `self` (the guards' old `setattr(module, name, value)`), `vars(m)[k] = ...` or
    `m.__dict__[k] = ...`, and an assignment to `m.name` (or `m.a.b`) where `m` is a name the file
    imports (a module, or a name from one: a class's attribute is its module's state too).
    pytest's `monkeypatch.setattr` is a method call, so it never counts."""
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {alias.asname or alias.name for alias in node.names}

    def root(node):
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    def patches(target) -> bool:
        if isinstance(target, ast.Attribute):
            return root(target) in imported
        if isinstance(target, ast.Subscript):  # vars(m)[k], m.__dict__[k]
            holder = target.value
            return ((isinstance(holder, ast.Call) and isinstance(holder.func, ast.Name) and holder.func.id == "vars")
                    or (isinstance(holder, ast.Attribute) and holder.attr == "__dict__"))
        return False

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            if not (node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "self"):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        targets = (node.targets if isinstance(node, (ast.Assign, ast.Delete))
                   else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for target in targets:
            for each in target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]:
                if patches(each):
                    found.append(f"{node.lineno}: {ast.unparse(each)} =")
    return found


def test_no_module_patches_another_modules_globals():
    """Settings travel as values (e.g. the ops' guards, dsa.core.guards): no module overwrites
    another's constants, which would be process-wide and not thread-safe. Checked in the product,
    the scripts and the tests (where only pytest's monkeypatch may patch, and restores after)."""
    files = [path for path, _, _ in modules()] + sorted((ROOT / "tests").glob("*.py"))
    wrong = [f"{path.relative_to(ROOT)}:{line}" for path in files if path.name not in PATCHING_ALLOWED
             for line in patches_of(path.read_text())]
    assert not wrong, wrong
    # The check sees every form (the guards' old patching first), and not a module's own or an object's state.
    sample = """
from search_space import pre
import dsa.functions.pipeline as pipeline
from dsa.allocation.ratios import sanitize
for module, name, value in MOVED:
    setattr(module, name, value)
pre.TINY = 1e-30
pipeline.DEPTH_INSET, limit = 1e-4, 3
sanitize.__defaults__ = (None,)
vars(pre)["EXP_MAX"] += 5
TINY = 1e-30
setattr(self, "x", 1)
self.values = {}
monkeypatch.setattr(pre, "TINY", 1e-30)
"""
    assert sorted(int(line.split(":")[0]) for line in patches_of(sample)) == [6, 7, 8, 9, 10]

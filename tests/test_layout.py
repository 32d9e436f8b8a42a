"""The package layering README.md describes: no module imports from a layer above its own."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {"dsa.core": 0, "evaluators": 1, "dsa.allocation": 2, "search_space": 3, "dsa.functions": 4,
        "dsa.distributed": 5, "dsa.outputs": 5, "dsa.search": 6, "cli": 7}


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
    for path in (ROOT / "bench").glob("*.py"):
        yield path, "cli", "cli"
    for top in ("evaluators", "search_space", "dsa"):
        for path in (ROOT / top).rglob("*.py"):
            package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
            yield path, package, layer_of(package) or layer_of(package + ".x")


def test_no_import_reaches_a_higher_layer():
    wrong = []
    for path, package, layer in modules():
        if layer is None:  # dsa/__init__.py
            continue
        for name in imports_of(path, package):
            target = layer_of(name)
            if target and RANK[target] > RANK[layer]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong


WORKER_BENCHES = ("workers.py", "lost_node.py")  # the benchmarks of the workers themselves


def test_apply_and_benches_do_not_use_the_worker_module():
    users = [path.name for path, _, _ in modules() if path.parent in (ROOT, ROOT / "bench")
             and path.name not in WORKER_BENCHES and any("dsa.distributed" in n for n in imports_of(path, "cli"))]
    assert not users, users

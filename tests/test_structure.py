"""The package's dependency rules, read from the source: no import cycle among its modules, no import of the
scripts or the benchmark, a network module that knows no files, and kernels that know no network."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mobilenetv3"


def imports_of(path: Path) -> set:
    """Every module `path` imports, at any depth of its code, as absolute dotted names (relative ones resolved
    against the package; `from X import Y` also counts X.Y, which is the module when Y is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = f"{PACKAGE.name}.{node.module}" if node.level and node.module else \
                PACKAGE.name if node.level else node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> dict:
    """{module: the package's modules it imports} for every module but the package's __init__."""
    modules = {f"{PACKAGE.name}.{path.stem}": path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict):
    """One import cycle as [a, b, ..., a], or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b2", "a"}, "b2": set()}) == ["a", "b", "a"]


def test_the_package_has_no_import_cycle():
    graph = package_graph()
    assert len(graph) > 20 and sum(map(len, graph.values())) > 40  # the walk sees the package's imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_library_imports_no_script_and_no_benchmark():
    for path in PACKAGE.rglob("*.py"):
        outside = {m for m in imports_of(path) if m.split(".")[0] in ("scripts", "benchmarks", "tests", "conftest")}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_the_network_knows_no_files_and_the_kernels_know_no_network():
    """model.py builds cells from MindSpore alone (and our dropout, itself MindSpore only): no files, no loop."""
    top_level = {m for m in imports_of(PACKAGE / "model.py") if not m.startswith("mindspore")}
    top_level = {m for m in top_level if not any(m.startswith(f"{o}.") for o in top_level)}  # X, not X.name
    assert top_level == {"dataclasses", "typing", "mobilenetv3.dropout"}, sorted(top_level)
    assert all(m.startswith("mindspore") for m in imports_of(PACKAGE / "dropout.py"))
    assert package_graph()["mobilenetv3.cpu_kernels"] == {"mobilenetv3.cpu_info", "mobilenetv3.native"}
    assert package_graph()["mobilenetv3.jpeg_crop"] == {"mobilenetv3.native"} and not package_graph()["mobilenetv3.native"]

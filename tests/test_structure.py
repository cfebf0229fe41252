"""The package's structure, read from the source: its parts (the subpackages and the top-level modules)
import each other exactly as docs/architecture.md draws it, with no import cycle among modules or parts;
the network knows no files, the kernels know no network, the library prints nothing and imports no script;
importing it changes nothing in the process; no module is too long to read."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mobilenetv3"
NAME = PACKAGE.name
MOST_LINES = 350

# Small modules every part may use, left out of docs/architecture.md's picture.
UTILITIES = {"atomic", "errors", "log", "progress"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set:
    """Every module `path` imports, at any depth of its code, as absolute dotted names (relative ones resolved
    against its package; `from X import Y` also counts X.Y, which is the module when Y is one)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def package_modules() -> dict:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def package_graph() -> dict:
    """{module: the package's modules it imports} (a package's __init__ counts as the package itself)."""
    modules = package_modules()
    ancestors = {name: {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} for name in modules}
    return {name: imports_of(path) & set(modules) - {name} - ancestors[name] for name, path in modules.items()}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


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


def test_relative_imports_resolve_across_subpackages(tmp_path, monkeypatch):
    source = PACKAGE / "training" / "trainer.py"
    found = imports_of(source)
    assert {f"{NAME}.models.factory", f"{NAME}.training.step_log", f"{NAME}.evaluation"} <= found


def test_the_package_has_no_import_cycle_among_modules_or_parts():
    graph = package_graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 80  # the walk sees the package's imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    parts = {}
    for module, targets in graph.items():
        parts.setdefault(part_of(module), set()).update(part_of(t) for t in targets if part_of(t) != part_of(module))
    assert find_cycle(parts) is None, " -> ".join(find_cycle(parts))


def test_the_library_imports_no_script_and_no_benchmark():
    for path in PACKAGE.rglob("*.py"):
        outside = {m for m in imports_of(path) if m.split(".")[0] in ("scripts", "benchmarks", "tests", "conftest",
                                                                        "fashion_mnist")}
        assert not outside, f"{path} imports {sorted(outside)}"


def third_party(path: Path) -> set:
    """What `path` imports from outside the package, as top-level names."""
    return {m.split(".")[0] for m in imports_of(path) if not m.startswith(NAME)}


def test_the_network_knows_no_files_and_the_kernels_know_no_network():
    """The network's modules build cells from MindSpore alone (and each other): no files, no loop, no data."""
    network = ("architectures", "mobilenetv3", "dropout")
    for name in network:
        path = PACKAGE / "models" / f"{name}.py"
        ours = {m for m in imports_of(path) if m.startswith(NAME)}
        assert all(m.startswith(f"{NAME}.models.") and m.split(".")[2] in network for m in ours), (name, ours)
        assert third_party(path) <= {"dataclasses", "typing", "mindspore"}, (name, third_party(path))
    graph = package_graph()
    for module, targets in graph.items():
        if part_of(module) == "native":
            assert all(part_of(t) == "native" for t in targets), (module, targets)
    assert graph[f"{NAME}.native.cpu_kernels"] == {f"{NAME}.native.cpu_info", f"{NAME}.native.build"}
    assert graph[f"{NAME}.native.jpeg_crop"] == {f"{NAME}.native.build"} and not graph[f"{NAME}.native.build"]


def test_the_library_logs_and_only_the_cli_prints():
    printing = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        calls = [node.lineno for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
        printing += [f"{path.relative_to(PACKAGE)}:{line}" for line in calls]
    assert not printing, printing


def test_no_module_is_over_the_length_a_reader_takes_in():
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MOST_LINES}
    assert not long, long


def test_every_subpackage_says_what_it_is_and_what_it_imports():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and ("import" in doc.lower() or "sits on" in doc.lower()), init


# Run in a fresh interpreter: what importing the package and building a model changes in the process.
IMPORT_IS_INERT = """
import json, logging, os, sys
before = dict(env=dict(os.environ), affinity=sorted(os.sched_getaffinity(0)),
              levels={name: logging.getLogger(name).level for name in ("", "mobilenetv3", "mindspore")})
import mobilenetv3
net = mobilenetv3.create_model("mobilenet_v3_small", num_classes=10)
after = dict(env=dict(os.environ), affinity=sorted(os.sched_getaffinity(0)),
             levels={name: logging.getLogger(name).level for name in ("", "mobilenetv3", "mindspore")})
changed = {k: sorted(set(after["env"].items()) ^ set(before["env"].items())) if k == "env" else (before[k], after[k])
           for k in before if before[k] != after[k]}
print(json.dumps(changed))
"""


def test_importing_the_package_and_building_a_model_changes_nothing_in_the_process():
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "GLOG_v")}
    result = subprocess.run([sys.executable, "-c", IMPORT_IS_INERT], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "{}"


def test_scripts_help_starts_without_mindspore():
    """--help answers at once: the scripts import the library inside main()."""
    code = ("import runpy, sys; sys.argv = ['train.py', '--help']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('mindspore' in sys.modules)")
    script = str(PACKAGE.parent / "scripts" / "train.py")
    result = subprocess.run([sys.executable, "-c", code % script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--data_url" in result.stdout and result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("old, name", [("model", "MobileNetV3"), ("model", "ARCHITECTURES"),
                                       ("factory", "create_model")])
def test_old_import_paths_still_resolve(old, name):
    import importlib
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"{NAME}.{old}")
        value = getattr(module, name)
    assert value is not None and any("is now" in str(w.message) for w in caught)


def test_the_architecture_doc_draws_the_imports_as_they_are():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    drawn = {tuple(line.split(" --> ")) for line in (raw.strip() for raw in block.splitlines()) if " --> " in line}
    drawn.discard(("scripts", "cli"))
    actual = {(part_of(module), part_of(target)) for module, targets in package_graph().items() for target in targets}
    actual = {(a, b) for a, b in actual if a != b and not {a, b} & (UTILITIES | {"__init__"})}
    assert drawn == actual, f"only drawn: {sorted(drawn - actual)}; only in the code: {sorted(actual - drawn)}"

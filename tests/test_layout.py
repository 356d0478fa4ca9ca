"""The house rules of the tree: no import cycles, the library never reaches into the course tools,
the benchmarks or the tests, and the wheel ships the library only."""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "moe_lab"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved), top level or lazy."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from . import routing` imports a module
    return found


def graph(paths) -> dict[str, set[str]]:
    mods = {module_name(p): p for p in paths}
    edges = {}
    for name, path in mods.items():
        deps = set()
        for imp in imports_of(path):
            # the longest known module that `imp` names (a submodule, else its package)
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        edges[name] = deps
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules, or None. A package importing its own submodules (its
    __init__ re-exporting them) is the normal shape, so package -> submodule edges are ignored."""
    def deps(n):
        return {d for d in edges[n] if not d.startswith(n + ".")}

    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(deps(n)):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


LIBRARY = sorted(p for p in PKG.rglob("*.py") if "grading" not in p.relative_to(PKG).parts and p.name != "__main__.py")


def test_the_import_graph_has_no_cycle():
    edges = graph(sorted(PKG.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")))
    assert len(edges) > 30
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"p.style"}, "p.style": set()}) is None


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_never_imports_the_tools_benchmarks_or_tests(path):
    bad = [m for m in imports_of(path)
           if m.split(".")[0] in ("benchmarks", "tests", "trace_factory", "rank_fns") or m.startswith("moe_lab.grading")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_layer_does_not_depend_on_the_reference():
    deps = graph(sorted(PKG.rglob("*.py")))["moe_lab.layer"]
    assert "moe_lab.reference" not in deps


def test_every_module_is_small_and_cites_or_explains_itself():
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 400, f"{path.relative_to(ROOT)} has {len(text.splitlines())} lines"
        if path.name != "__init__.py" or len(text.splitlines()) > 3:
            assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(ROOT)} has no module docstring"


@pytest.mark.parametrize("module,source", [
    ("routing", "2006.16668"), ("routing", "2202.08906"), ("routing", "2412.19437"), ("experts", "1909.08053"),
    ("layer", "2101.03961"), ("train", "2412.19437"), ("mesh", "2201.05596"),
])
def test_concept_modules_cite_their_source(module, source):
    assert f"arXiv {source}" in (PKG / f"{module}.py").read_text()


def test_the_wheel_ships_the_library_and_no_benchmark_or_test(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("moe_lab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    py = [n for n in names if n.endswith(".py")]
    assert "moe_lab/routing.py" in py and "moe_lab/viz/step.py" in py and "moe_lab/grading/grader.py" in py
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/", "solutions/", "chapters/"))]
    assert not [n for n in py if "bench" in n.rsplit("/", 1)[-1] or n.rsplit("/", 1)[-1] in ("rank_fns.py", "trace_factory.py")]

"""House rules for the chapter notebooks (nbval runs them; these check what nbval cannot)."""
import ast
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_the_chapters_are_numbered_in_order():
    numbers = [int(p.name[:2]) for p in CHAPTERS]
    assert len(numbers) >= 5 and numbers == list(range(1, len(numbers) + 1))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_small_and_stores_no_widget_state(path):
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size:,} bytes"
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"]
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            assert "text/html" not in out.get("data", {}), "figures must be stored as plotly JSON, not HTML"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_checks_its_lessons_and_imports_its_code(path):
    nb = json.loads(path.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    checked = [c for c in code if c.lstrip().startswith("# NBVAL_CHECK_OUTPUT")]
    assert len(checked) >= 2
    for c in checked:  # a checked cell must have stored output to compare against
        cell = next(x for x in nb["cells"] if "".join(x["source"]) == c)
        assert cell["outputs"], f"checked cell without stored output in {path.name}: {c[:60]!r}"
    src = "\n".join(code)
    assert "from moe_lab" in src
    for banned in ("import multiprocessing", "init_process_group", "plotly.graph_objects", "go.Figure("):
        assert banned not in src, f"{path.name}: {banned!r} belongs in moe_lab, not in a notebook"


def opened_and_closed(src: str):
    """Names bound to a Cluster(...) and names whose .close() is called; `with Cluster(...)` closes itself."""
    tree = ast.parse(src)
    opened, closed = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _is_cluster(node.value):
            opened += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "close" \
                and isinstance(node.func.value, ast.Name):
            closed.add(node.func.value.id)
    return opened, closed


def _is_cluster(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Name) and f.id == "Cluster") or (isinstance(f, ast.Attribute) and f.attr == "Cluster")


def _python(cell) -> str:
    return "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_cluster_a_chapter_opens_is_closed(path):
    src = "\n".join(_python(c) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    opened, closed = opened_and_closed(src)
    assert src.count("Cluster(") == len(opened) + src.count("with Cluster("), "a Cluster not bound to a name"
    assert not [name for name in opened if name not in closed], f"{path.name}: clusters never closed"


def test_the_cluster_check_catches_a_second_cluster_left_open():
    src = "a = Cluster(2)\nb = moe_lab.Cluster(4)\na.close()\nwith Cluster(2) as c:\n    pass\n"
    opened, closed = opened_and_closed(src)
    assert opened == ["a", "b"] and closed == {"a"}

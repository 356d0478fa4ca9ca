"""House rules for the chapter notebooks (nbval runs them; these check what nbval cannot)."""
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_the_five_chapters_exist_in_order():
    assert [p.name[:2] for p in CHAPTERS] == ["01", "02", "03", "04", "05"]


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


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_clusters_are_closed(path):
    src = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    opened = src.count("Cluster(")
    assert opened == 0 or "cluster.close()" in src or "with Cluster(" in src

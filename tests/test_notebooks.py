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


# --------------------------------------------------------------------------- predict, then reveal
# A Predict cell "reveals" the live cell that first binds a name its answer reads: the answer must be
# a lambda (computed from the run, at reveal time) that reads at least one name no cell up to the
# Predict's own has bound yet. So the guess is typed before the result exists, and the lambda's
# first such name points at the cell it asks about. A later cell calls `<predict>.reveal(<number>)`
# with a fixed guess, so headless runs (nbval) execute the answer and store the verdict.

def _bound(tree) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _fixed_number(node) -> bool:
    """A guess written as a number in the source: 900, -1, 0.25, 4 * 1024 (no names, no calls)."""
    parts = list(ast.walk(node))
    return all(isinstance(n, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)) for n in parts) and \
        all(isinstance(n.value, (int, float)) and not isinstance(n.value, bool) for n in parts if isinstance(n, ast.Constant))


def _answer(call: ast.Call):
    if len(call.args) >= 2:
        return call.args[1]
    return next((kw.value for kw in call.keywords if kw.arg == "answer"), None)


def predictions(cells: list[str]) -> list[dict]:
    """One dict per Predict(...) in the code cells (sources, in order): where it is, the name it is
    bound to, the cell it reveals (first binding of a name its answer reads, after it; None if
    none), and the first later cell that calls `<name>.reveal(<number>)` (None if none)."""
    trees = [ast.parse(c) for c in cells]
    first_bound = {}
    for i, tree in enumerate(trees):
        for name in _bound(tree):
            first_bound.setdefault(name, i)
    found = []
    for i, tree in enumerate(trees):
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                continue
            f = node.value.func
            if not ((isinstance(f, ast.Name) and f.id == "Predict") or (isinstance(f, ast.Attribute) and f.attr == "Predict")):
                continue
            var = node.targets[0].id if isinstance(node.targets[0], ast.Name) else None
            answer = _answer(node.value)
            reveals = None
            if isinstance(answer, ast.Lambda):
                args = {a.arg for a in answer.args.args}
                reads = {n.id for n in ast.walk(answer.body) if isinstance(n, ast.Name) and n.id not in args}
                later = sorted(first_bound[n] for n in reads if first_bound.get(n, -1) > i)
                reveals = later[0] if later else None
            revealed_at = next((j for j in range(i + 1, len(trees)) for n in ast.walk(trees[j])
                                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                                and n.func.attr == "reveal" and isinstance(n.func.value, ast.Name)
                                and n.func.value.id == var and n.args and _fixed_number(n.args[0])), None)
            found.append(dict(cell=i, var=var, reveals=reveals, revealed_at=revealed_at))
    return found


EVERY_CHAPTER = [ROOT / "chapters" / name for name in (
    "01_sparsity.ipynb", "02_alltoall.ipynb", "03_load_balancing.ipynb", "04_composition.ipynb",
    "05_at_scale.ipynb", "06_beyond_gshard.ipynb", "07_network.ipynb")]


@pytest.mark.parametrize("path", [p for p in EVERY_CHAPTER if p.exists()] + [p for p in CHAPTERS if p not in EVERY_CHAPTER],
                         ids=lambda p: p.name)
def test_every_chapter_asks_for_predictions_before_it_reveals_them(path):
    cells = [_python(c) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    found = predictions(cells)
    assert len(found) >= 2, f"{path.name}: {len(found)} Predict cell(s), the course asks for at least 2"
    for p in found:
        where = f"{path.name}: the Predict in code cell {p['cell']}"
        assert p["var"], f"{where} is not bound to a name (its reveal needs one)"
        assert p["reveals"] is not None, (f"{where}: its answer must be a lambda reading a name that a later "
                                          "cell computes (the live cell it asks about)")
        assert p["revealed_at"] is not None and p["revealed_at"] >= p["reveals"], \
            f"{where}: no `{p['var']}.reveal(<number>)` after the cell it reveals"


def test_the_prediction_check_catches_an_answer_already_computed():
    ok = ["p = Predict('rows?', lambda: rows)", "rows = 3", "print(p.reveal(2))"]
    assert predictions(ok) == [dict(cell=0, var="p", reveals=1, revealed_at=2)]
    shown_after = ["rows = 3", "p = Predict('rows?', lambda: rows)", "print(p.reveal(2))"]
    assert predictions(shown_after)[0]["reveals"] is None  # the result was already on screen
    a_number = ["p = Predict('rows?', 3)", "rows = 3", "print(p.reveal(2))"]
    assert predictions(a_number)[0]["reveals"] is None  # not computed from the run
    assert predictions(["p = Predict('rows?', lambda: rows)", "rows = 3", "p.reveal(4 * 1024)"])[0]["revealed_at"] == 2
    a_name = ["p = Predict('rows?', lambda: rows)", "rows = 3", "p.reveal(rows)"]
    assert predictions(a_name)[0]["revealed_at"] is None  # the 'guess' is the answer itself
    never_revealed = ["p = Predict('rows?', lambda: rows)", "rows = 3"]
    assert predictions(never_revealed)[0]["revealed_at"] is None


# --------------------------------------------------------------------------- static figures
# Viewers without a kernel (GitHub, nbviewer) draw no plotly JSON: each stored figure carries a
# PNG twin, made by `python -m moe_lab.nb --static <notebook>` after the outputs are regenerated.
STATIC_CHAPTERS = [ROOT / "chapters" / n for n in ("01_sparsity.ipynb", "02_alltoall.ipynb", "03_load_balancing.ipynb",
                                                   "04_composition.ipynb", "05_at_scale.ipynb", "06_beyond_gshard.ipynb",
                                                   "07_network.ipynb")]


@pytest.mark.parametrize("path", STATIC_CHAPTERS, ids=lambda p: p.name)
def test_every_stored_figure_has_a_static_image(path):
    import base64

    from moe_lab.nb import plotly_outputs

    outs = plotly_outputs(json.loads(path.read_text()))
    for out in outs:
        png = out["data"].get("image/png")
        assert png, f"{path.name}: a plotly figure without a PNG: run python -m moe_lab.nb --static {path.name}"
        assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_static_tool_adds_a_png_beside_the_figure_and_keeps_the_json(tmp_path):
    pytest.importorskip("kaleido")
    if not pathlib.Path("/usr/bin/chromium").exists():
        pytest.skip("needs Chromium at /usr/bin/chromium")
    import base64

    import nbformat

    from moe_lab.nb import PLOTLY_MIME, main

    fig = {"data": [{"type": "bar", "x": [0, 1], "y": [3, 1]}], "layout": {"height": 200}}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[
        nbformat.v4.new_output("display_data", data={PLOTLY_MIME: fig, "text/plain": "Figure"})])])
    path = tmp_path / "one.ipynb"
    nbformat.write(nb, path)
    assert main(["--static", str(path)]) == 0
    data = json.loads(path.read_text())["cells"][0]["outputs"][0]["data"]
    assert data[PLOTLY_MIME] == fig and base64.b64decode(data["image/png"])[:4] == b"\x89PNG"

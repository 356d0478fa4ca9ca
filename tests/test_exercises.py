"""exercises/ is generated from solutions/, never edited: it stays in step, hides what it must,
and every exercise is built so that an untouched stub fails its checks.

No kernel starts here; tests/test_grading.py runs the notebooks.
"""
from __future__ import annotations

import ast
import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from moe_lab.grading import generate as gen
from moe_lab import grading

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"
NAMES = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))
NBGRADER_KEYS = {"grade", "grade_id", "locked", "points", "schema_version", "solution", "task"}


def read(path):
    return nbformat.read(str(path), as_version=4)


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = grading.main(list(argv))
    return code, out.getvalue()


# --------------------------------------------------------------------------- in step with solutions/


def test_there_are_exercises_and_each_has_its_student_copy():
    assert len(NAMES) >= 5
    assert sorted(p.name for p in EXERCISES.glob("*.ipynb")) == NAMES


def test_committed_exercises_are_in_step_with_solutions():
    code, out = run_cli("make-exercises", "--check", "--solutions", str(SOLUTIONS), "--exercises", str(EXERCISES))
    assert code == 0, out
    assert "in step" in out


def test_check_fails_after_tampering_with_a_copy_and_regenerating_repairs_it(tmp_path):
    copy = tmp_path / "exercises"
    shutil.copytree(EXERCISES, copy)
    edited, removed = copy / NAMES[0], copy / NAMES[1]
    nb = read(edited)
    nb.cells[0].source += "\n\nA hand edit."
    nbformat.write(nb, str(edited))
    removed.unlink()
    shutil.copy(EXERCISES / NAMES[2], copy / "ex99_orphan.ipynb")

    code, out = run_cli("make-exercises", "--check", "--solutions", str(SOLUTIONS), "--exercises", str(copy))
    assert code == 1
    assert NAMES[0] in out and NAMES[1] in out and "ex99_orphan.ipynb" in out
    assert removed.exists() is False  # --check changes nothing

    code, out = run_cli("make-exercises", "--solutions", str(SOLUTIONS), "--exercises", str(copy))
    assert code == 0, out
    assert sorted(p.name for p in copy.glob("*.ipynb")) == NAMES
    for name in NAMES:
        assert (copy / name).read_bytes() == (EXERCISES / name).read_bytes(), name
    assert run_cli("make-exercises", "--check", "--solutions", str(SOLUTIONS), "--exercises", str(copy))[0] == 0


def test_generation_is_deterministic(tmp_path):
    for out in ("a", "b"):
        assert gen.sync_exercises(SOLUTIONS, tmp_path / out) != []  # everything was missing
    for name in NAMES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_python_m_moe_lab_make_exercises_check_runs_from_the_checkout():
    proc = subprocess.run([sys.executable, "-m", "moe_lab", "make-exercises", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- what the student sees


@pytest.mark.parametrize("name", NAMES)
def test_exercise_hides_solutions_and_hidden_tests_and_has_no_outputs(name):
    source, exercise = read(SOLUTIONS / name), read(EXERCISES / name)
    assert len(source.cells) == len(exercise.cells)
    assert not exercise.metadata.get("widgets")
    for src, cell in zip(source.cells, exercise.cells):
        for marker in (gen.BEGIN_SOLUTION, gen.END_SOLUTION, gen.BEGIN_HIDDEN, gen.END_HIDDEN):
            assert marker not in cell.source
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        assert cell.metadata.get("nbgrader") == src.metadata.get("nbgrader")  # metadata kept
        if gen.is_solution_cell(src):
            hidden = src.source.split(gen.BEGIN_SOLUTION)[1].split(gen.END_SOLUTION)[0]
            for line in hidden.splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    assert line not in cell.source.splitlines(), f"solution line leaked: {line!r}"
            if gen.is_written_cell(src):  # the model answer and its rubric stay in solutions/
                assert cell.source == gen.TEXT_STUB and not gen.is_answered(cell.source)
            else:
                assert "raise NotImplementedError" in cell.source
        if gen.is_grade_cell(src) and not gen.is_written_cell(src):
            assert "HIDDEN" not in cell.source
            assert cell.source.strip(), "a check cell must keep its visible checks"
            assert gen.RUN_ALL_TAG in cell.metadata.get("tags", [])


def _functions(tree) -> dict:
    return {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("name", NAMES)
def test_stub_sits_inside_the_function_under_its_signature(name):
    """Every function whose body held a solution block keeps its signature and ends in the stub."""
    source, exercise = read(SOLUTIONS / name), read(EXERCISES / name)
    for src, cell in zip(source.cells, exercise.cells):
        if not (gen.is_solution_cell(src) and src.cell_type == "code"):
            continue
        begin_lines = [i + 1 for i, line in enumerate(src.source.splitlines()) if line.strip() == gen.BEGIN_SOLUTION]
        student = _functions(ast.parse(gen.python_source(cell.source)))
        for fn_name, fn in _functions(ast.parse(gen.python_source(src.source))).items():
            if any(fn.lineno < line <= fn.end_lineno for line in begin_lines):
                assert fn_name in student, f"the signature of {fn_name} must stay in the student copy"
                last = student[fn_name].body[-1]
                assert isinstance(last, ast.Raise) and "NotImplementedError" in ast.unparse(last)


@pytest.mark.parametrize("name", NAMES)
def test_every_visible_check_uses_the_students_code(name):
    """So the untouched stub fails the checks the student can see, not only the hidden ones."""
    exercise = read(EXERCISES / name)
    student = set()
    for cell in exercise.cells:
        if gen.is_solution_cell(cell) and cell.cell_type == "code":
            student |= set(_functions(ast.parse(gen.python_source(cell.source))))
    for cell in exercise.cells:
        if gen.is_grade_cell(cell) and cell.cell_type == "code":
            tree = ast.parse(cell.source)
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(_functions(tree))
            assert used & student, f"{gen.grade_id(cell)} never uses {sorted(student)}"


# --------------------------------------------------------------------------- the source notebooks


@pytest.mark.parametrize("name", NAMES)
def test_source_cells_carry_nbgrader_metadata(name):
    nb = read(SOLUTIONS / name)
    gen.check_source(nb, name)
    solutions = [c for c in nb.cells if gen.is_solution_cell(c)]
    grades = [c for c in nb.cells if gen.is_grade_cell(c)]
    assert solutions and grades, "an exercise has something to write and something graded"
    for cell in nb.cells:
        if gen.BEGIN_SOLUTION in cell.source or gen.BEGIN_HIDDEN in cell.source:
            assert set(gen.nbgrader_meta(cell)) == NBGRADER_KEYS, cell.metadata
    for cell in solutions:
        meta = gen.nbgrader_meta(cell)
        assert set(meta) == NBGRADER_KEYS
        # a written answer is nbgrader's "manually graded answer": a solution that is also graded
        assert meta["solution"] is True and meta["grade"] is gen.is_written_cell(cell) and meta["locked"] is False
        assert meta["schema_version"] == 3 and meta["task"] is False
    for cell in grades:
        meta = gen.nbgrader_meta(cell)
        assert set(meta) == NBGRADER_KEYS and meta["points"] > 0
        if gen.is_written_cell(cell):
            assert meta["locked"] is False and gen.BEGIN_SOLUTION in cell.source, "a written answer carries its rubric"
        else:
            assert meta["locked"] is True and meta["solution"] is False
    assert any(gen.BEGIN_HIDDEN in c.source for c in grades), "each exercise keeps some checks hidden"
    assert any(c.cell_type == "code" for c in grades), "each exercise has a part its checks grade"
    assert not any(c.get("outputs") for c in nb.cells), "commit solutions without outputs"


def test_grade_ids_are_unique_across_all_exercises():
    """The score CSV has one column per grade_id: two exercises must never share one."""
    ids = [gen.grade_id(c) for name in NAMES for c in read(SOLUTIONS / name).cells if gen.grade_id(c)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_that_draw_random_numbers_seed_them(name):
    cells = [c for c in read(SOLUTIONS / name).cells if c.cell_type == "code"]
    if any(re.search(r"\brand(n|int|perm)?\(|random\.", c.source) for c in cells):
        assert "manual_seed(" in cells[0].source or "seed(" in cells[0].source, "seed every RNG in the setup cell"


# --------------------------------------------------------------------------- the transformation itself


def test_stub_keeps_the_lines_around_the_block_at_the_blocks_indentation():
    source = '''class Router:
    def route(self, x):
        """Docstring stays."""
        ### BEGIN SOLUTION
        return x * 2
        ### END SOLUTION

def helper(y):
    ### BEGIN SOLUTION
    return y
    ### END SOLUTION'''
    stub = gen.stub_solution(source)
    assert stub.splitlines() == [
        "class Router:",
        "    def route(self, x):",
        '        """Docstring stays."""',
        "        # YOUR CODE HERE",
        '        raise NotImplementedError("write the body of route()")',
        "",
        "def helper(y):",
        "    # YOUR CODE HERE",
        '    raise NotImplementedError("write the body of helper()")',
    ]
    ast.parse(stub)
    assert gen.stub_solution("x = 1", "code") == '# YOUR CODE HERE\nraise NotImplementedError("write your solution")'
    assert gen.stub_solution("An answer in words.", "markdown") == "YOUR ANSWER HERE"


def test_a_cell_that_writes_a_module_keeps_its_magic_and_parses_as_python():
    """Exercises whose code runs on Cluster ranks write it to a module with %%writefile."""
    source = "%%writefile student_dispatch.py\ndef dispatch(ctx):\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
    stub = gen.stub_solution(source)
    assert stub.splitlines()[0] == "%%writefile student_dispatch.py"
    assert 'raise NotImplementedError("write the body of dispatch()")' in stub
    tree = ast.parse(gen.python_source(stub))
    assert list(_functions(tree)) == ["dispatch"] and _functions(tree)["dispatch"].lineno == 2
    assert gen.python_source("x = 1\n%%writefile y.py") == "x = 1\n%%writefile y.py"  # only a first line


def test_hidden_blocks_are_removed_and_visible_lines_kept():
    source = "assert f(1) == 1\n### BEGIN HIDDEN TESTS\nassert f(2) == 4\n### END HIDDEN TESTS\nassert f(0) == 0"
    assert gen.strip_hidden_tests(source) == "assert f(1) == 1\nassert f(0) == 0"


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "no matching"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "before the previous block was closed"),
])
def test_unbalanced_markers_are_reported(source, message):
    with pytest.raises(ValueError, match=message):
        gen.stub_solution(source, where="ex9 cell 3")


def test_markers_outside_marked_cells_and_points_are_checked():
    def notebook(metadata, source):
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata=metadata)])

    with pytest.raises(ValueError, match="solution=true"):
        gen.check_source(notebook({}, "### BEGIN SOLUTION\nx = 1\n### END SOLUTION"))
    with pytest.raises(ValueError, match="not a grade cell"):
        gen.check_source(notebook({}, "### BEGIN HIDDEN TESTS\nassert 1\n### END HIDDEN TESTS"))
    meta = {"nbgrader": {"grade": True, "grade_id": "p", "locked": True, "points": 0, "schema_version": 3,
                         "solution": False, "task": False}}
    with pytest.raises(ValueError, match="points > 0"):
        gen.check_source(notebook(meta, "assert 1"))


def test_a_written_answer_is_a_markdown_solution_and_grade_cell_whose_rubric_stays_hidden():
    def meta(**kw):
        m = {"grade": True, "grade_id": "w", "locked": False, "points": 3, "schema_version": 3,
             "solution": True, "task": False}
        return {"nbgrader": {**m, **kw}}

    rubric = "### BEGIN SOLUTION\nModel answer; rubric: 1 point per reason.\n### END SOLUTION"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(rubric, metadata=meta())])
    gen.check_source(nb)  # allowed: nbgrader's "manually graded answer"
    [cell] = gen.make_exercise(nb).cells
    assert cell.source == "YOUR ANSWER HERE" and "raises-exception" not in cell.metadata.get("tags", [])
    assert gen.written_parts(nb) == [("w", 3.0, True)]
    for blank in ("YOUR ANSWER HERE", "  \n", "YOUR ANSWER HERE\n\n"):
        assert not gen.is_answered(blank)
    assert gen.is_answered("YOUR ANSWER HERE\nTwo experts per GPU.")
    with pytest.raises(ValueError, match="must not be locked"):
        gen.check_source(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(rubric, metadata=meta(locked=True))]))
    with pytest.raises(ValueError, match="only its solution block"):  # else an untouched copy looks answered
        gen.check_source(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("Say why.\n" + rubric, metadata=meta())]))
    with pytest.raises(ValueError, match="also be a solution"):
        gen.check_source(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("x", metadata=meta(solution=False))]))
    with pytest.raises(ValueError, match="code cell cannot be both"):
        gen.check_source(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", metadata=meta())]))


def test_invalid_source_makes_the_command_fail_with_a_message(tmp_path):
    src = tmp_path / "solutions"
    src.mkdir()
    nb = read(SOLUTIONS / NAMES[0])
    cell = next(c for c in nb.cells if gen.is_solution_cell(c))
    cell.source = cell.source.replace(gen.END_SOLUTION, "")
    nbformat.write(nb, str(src / NAMES[0]))
    code, out = run_cli("make-exercises", "--solutions", str(src), "--exercises", str(tmp_path / "exercises"))
    assert code == 2 and "never closed" in out


# --------------------------------------------------------------------------- what a failing check says


def _visible_check(name: str, gid: str, answer: str) -> str:
    """Run the setup cells, `answer`, then one check cell's visible part in one namespace (no kernel):
    the message the student would read, or "" when it passes."""
    nb = read(SOLUTIONS / name)
    ns: dict = {"__name__": "__main__"}
    for cell in nb.cells:
        if cell.cell_type == "code" and not gen.is_grade_cell(cell) and not gen.is_solution_cell(cell) \
                and "check_exercise(" not in cell.source:
            exec(gen.python_source(cell.source), ns)
    exec(answer, ns)
    check = next(c for c in nb.cells if gen.grade_id(c) == gid)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(gen.strip_hidden_tests(check.source), ns)
    except AssertionError as e:
        return str(e)
    return ""


@pytest.mark.parametrize("name, gid, answer, says", [
    ("ex4_alltoall_splits.ipynb", "ex4_send_counts",
     "def send_counts(expert, world_size, num_experts):\n    return [1, 0, 0, 3, 0, 0, 0, 1]", "got a list"),
    ("ex4_alltoall_splits.ipynb", "ex4_send_counts",
     "def send_counts(expert, world_size, num_experts):\n"
     "    return torch.bincount(expert[expert >= 0] // (num_experts // world_size), minlength=world_size).float()",
     "dtype: expected torch.int64, got torch.float32"),
    ("ex4_alltoall_splits.ipynb", "ex4_send_counts",
     "def send_counts(expert, world_size, num_experts):\n"
     "    return torch.bincount(expert[expert >= 0] % world_size, minlength=world_size)", "not e % P"),
    ("ex5_combine.ipynb", "ex5_inverse",
     "def inverse_order(order, n):\n    return torch.argsort(order)", "shape: expected (6,), got (5,)"),
    ("ex5_combine.ipynb", "ex5_combine",
     "def combine(buffer_out, order, gates, expert):\n"
     "    N, k = gates.shape\n"
     "    out = buffer_out.new_zeros(N * k, buffer_out.shape[1])\n"
     "    out[order] = buffer_out\n"
     "    return (gates.unsqueeze(-1) * out.view(N, k, -1)).sum(1).detach()", "a detached tensor"),
    ("ex5_combine.ipynb", "ex5_combine",  # gates renormalised over the kept assignments
     "def combine(buffer_out, order, gates, expert):\n"
     "    N, k = gates.shape\n"
     "    out = buffer_out.new_zeros(N * k, buffer_out.shape[1])\n"
     "    out[order] = buffer_out\n"
     "    g = gates * (expert >= 0)\n"
     "    g = g / g.sum(1, keepdim=True).clamp_min(1e-9)\n"
     "    return (g.unsqueeze(-1) * out.view(N, k, -1)).sum(1)", "not renormalised"),
])
def test_a_failing_visible_check_says_expected_got_and_a_hint(name, gid, answer, says):
    message = _visible_check(name, gid, answer)
    assert says in message and "expected" in message and "got" in message, message
    assert "Hint:" in message, message


@pytest.mark.parametrize("name, gid", [("ex4_alltoall_splits.ipynb", "ex4_send_counts"),
                                       ("ex5_combine.ipynb", "ex5_inverse"), ("ex5_combine.ipynb", "ex5_combine")])
def test_the_solution_passes_its_visible_check(name, gid):
    solution = next(c for c in read(SOLUTIONS / name).cells if gen.grade_id(c) == f"{gid}_solution"
                    or gen.grade_id(c) == f"{gid}_order_solution")
    assert _visible_check(name, gid, gen.python_source(solution.source)) == ""

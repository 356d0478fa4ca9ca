"""The grader's parts that need no kernel: settings checked before anything runs, notebooks that
cannot be graded as they are, the data format between judge and kernel, and the library guard."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import nbformat
import pytest
import torch

from moe_lab import grading
from moe_lab.grading import forbid, grader
from moe_lab.grading import generate as gen
from moe_lab.grading.wire import Decoder, Encoder, WireError

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"
EX1 = "ex1_top_k_gating.ipynb"


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = grading.main(list(argv))
    return code, out.getvalue()


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("bad", [0, -5, math.nan, math.inf, "nan"])
def test_bad_time_limits_are_refused_before_anything_runs(bad, tmp_path):
    with pytest.raises(ValueError, match="cell_timeout"):
        grading.grade([tmp_path], SOLUTIONS, cell_timeout=bad)
    code, out = run_cli("grade", str(tmp_path), "--solutions", str(SOLUTIONS), "--cell-timeout", str(bad))
    assert code == 2 and "cell_timeout" in out


@pytest.mark.parametrize("bad", ["0", "-5", "nan", "lots", "1M"])
def test_bad_memory_limits_are_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="memory"):
        grading.parse_memory(bad)
    code, out = run_cli("grade", str(tmp_path), "--solutions", str(SOLUTIONS), "--memory", bad)
    assert code == 2 and "memory" in out


def test_memory_sizes_are_read_as_people_write_them():
    assert grading.parse_memory("4G") == 4 << 30
    assert grading.parse_memory("512M") == 512 << 20
    assert grading.parse_memory("2.5GiB") == int(2.5 * (1 << 30))
    assert grading.parse_memory(1 << 30) == 1 << 30


def test_missing_paths_are_reported_the_rest_graded_and_the_exit_status_says_so(tmp_path):
    (tmp_path / EX1).write_text("{ not json", encoding="utf-8")  # graded without a kernel
    code, out = run_cli("grade", str(tmp_path / EX1), str(tmp_path / "nope.ipynb"), "--solutions", str(SOLUTIONS))
    assert code == 1
    assert "nope.ipynb: no such notebook or folder" in out
    assert "could not read" in out and "1 notebook(s) graded" in out


def test_without_a_sandbox_grading_refuses_unless_unsafe(tmp_path, monkeypatch):
    monkeypatch.setattr(grader, "why_no_sandbox", lambda: "`bwrap` is not installed")
    save = tmp_path / "sub"
    save.mkdir()
    nbformat.write(nbformat.read(str(EXERCISES / EX1), as_version=4), str(save / EX1))
    with pytest.raises(grading.SandboxRefused, match="bwrap.*--unsafe"):
        grading.grade([save], SOLUTIONS)
    code, out = run_cli("grade", str(save), "--solutions", str(SOLUTIONS))
    assert code == 2 and "--unsafe" in out
    table = grading.format_table([grading.Result("a.ipynb", EX1, [])], unsafe=True)
    assert table.startswith("WARNING: graded with --unsafe")


def test_a_verdict_never_says_its_status_twice():
    p = grading.Part("x", 1, 0, "not run", "not run: the kernel died in an earlier cell")
    assert grading.report.verdict(p) == "not run: the kernel died in an earlier cell"
    p = grading.Part("x", 1, 0, "not run", "the kernel died in an earlier cell")
    assert grading.report.verdict(p) == "not run: the kernel died in an earlier cell"


# --------------------------------------------------------------------------- notebooks as submitted


def test_a_cell_without_source_makes_the_notebook_unreadable_not_the_run(tmp_path):
    raw = json.loads((EXERCISES / EX1).read_text())
    del raw["cells"][3]["source"]
    (tmp_path / EX1).write_text(json.dumps(raw))
    [result] = grading.grade([tmp_path / EX1], SOLUTIONS, report=lambda t: None)
    assert result.score == 0 and result.max_score == 5
    assert 'could not read: cell 3 has no "source"' in result.note


def test_a_duplicated_answer_cell_grades_the_last_copy_with_a_warning():
    source = nbformat.read(str(SOLUTIONS / EX1), as_version=4)
    sub = nbformat.read(str(EXERCISES / EX1), as_version=4)
    i = next(i for i, c in enumerate(sub.cells) if gen.is_solution_cell(c))
    second = copy.deepcopy(sub.cells[i])
    second.source = "def top_k_gating(logits, k):\n    return 'the last copy'"
    sub.cells.insert(i + 1, second)
    graded = gen.assemble(source, sub, EX1)
    assert "the last copy" in graded.cells[i].source
    assert gen.duplicated_answers(source, sub) == [
        "answer cell 'ex1_top_k_gating_solution' appears 2 times: the last copy is graded"]


def test_another_exercises_notebook_under_this_name_says_which(tmp_path):
    (tmp_path / EX1).write_bytes((SOLUTIONS / "ex3_aux_loss.ipynb").read_bytes())
    [result] = grading.grade([tmp_path / EX1], SOLUTIONS, report=lambda t: None)
    assert result.score == 0
    assert "this is the notebook of ex3_aux_loss.ipynb, not of ex1_top_k_gating.ipynb" in result.note


def test_a_folder_skips_notebooks_that_are_not_exercises(tmp_path):
    nbformat.write(nbformat.v4.new_notebook(), str(tmp_path / "01_chapter.ipynb"))
    (tmp_path / EX1).write_text("{}")
    found, missing, skipped = grading.find_notebooks([tmp_path])
    assert [p.name for p in found] == [EX1] and missing == [] and skipped == 1


# --------------------------------------------------------------------------- plain data, never pickle


def roundtrip(value, tmp_path):
    data = Encoder(tmp_path)(value)
    text = json.dumps(data)  # JSON, so nothing can hide in it
    return Decoder(tmp_path)(json.loads(text))


def test_tensors_numbers_and_containers_cross_as_they_are(tmp_path):
    x = torch.randn(3, 4, requires_grad=True)
    value = (x, torch.tensor(2.5), torch.tensor([[1, -1]]), torch.tensor([True, False]), 3, 0.5, "s", None,
             [1, (2, 3)], {"a": torch.zeros(0, 2)}, float("nan"))
    got = roundtrip(value, tmp_path)
    assert isinstance(got, tuple) and torch.equal(got[0], x.detach()) and got[0].requires_grad
    assert got[1].dim() == 0 and got[1].item() == 2.5
    assert got[2].dtype == torch.long and got[3].dtype == torch.bool
    assert got[4:8] == (3, 0.5, "s", None) and got[8] == [1, (2, 3)]
    assert got[9]["a"].shape == (0, 2) and math.isnan(got[10])
    assert not any(p.suffix not in (".npy",) for p in tmp_path.iterdir())


def test_objects_that_are_not_data_do_not_cross(tmp_path):
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    with pytest.raises(WireError, match="not plain data"):
        Encoder(tmp_path)(AlwaysEqual())

    class Sneaky(int):
        def __eq__(self, other):
            return True

    assert type(roundtrip(Sneaky(3), tmp_path)) is int  # an int subclass arrives as a plain int


def test_a_pickled_array_is_refused(tmp_path):
    import numpy as np

    np.save(tmp_path / "t0.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        Decoder(tmp_path)({"tensor": "t0.npy", "dtype": "float32", "grad": False})


# --------------------------------------------------------------------------- the library guard


SETUP = "import torch\nfrom moe_lab import routing"
NAMES = ["moe_lab.routing.top_k_gating", "moe_lab.reference.moe_forward"]


@pytest.mark.parametrize("answer", [
    "def top_k_gating(logits, k):\n    return routing.top_k_gating(logits, k)",
    "from moe_lab.routing import top_k_gating as t\ndef top_k_gating(logits, k):\n    return t(logits, k)",
    "import moe_lab.routing as r\ndef top_k_gating(logits, k):\n    return r.top_k_gating(logits, k)",
    "def top_k_gating(logits, k):\n    return getattr(routing, 'top_k_gating')(logits, k)",
    "import moe_lab\ndef top_k_gating(logits, k):\n    return moe_lab.reference.moe_forward(logits)",
])
def test_calling_the_library_answer_is_seen_in_the_syntax(answer):
    assert forbid.static_uses(answer, [SETUP], NAMES)


def test_an_own_function_of_the_same_name_is_not_a_library_call():
    answer = "def top_k_gating(logits, k):\n    probs = torch.softmax(logits, -1)\n    return top_k_gating_helper(probs)"
    assert forbid.static_uses(answer, [SETUP], NAMES) == []


def test_every_exercise_declares_what_its_answers_may_not_call():
    for path in sorted(SOLUTIONS.glob("ex[1-7]_*.ipynb")):
        names = forbid.forbidden_names(nbformat.read(str(path), as_version=4))
        assert names, path.name
        for name in names:
            module, _, attr = name.rpartition(".")
            assert hasattr(__import__(module, fromlist=[attr]), attr), name


# --------------------------------------------------------------------------- the self-check


def test_the_self_check_reports_a_written_answer_as_the_grader_does(tmp_path):
    """check_exercise(): the code part earns its points; the written part is "not answered" (0) while
    its cell holds the stub and "needs manual grading" (None: not known yet) once written."""
    name = "ex14_place_the_experts.ipynb"
    nb = nbformat.read(str(EXERCISES / name), as_version=4)
    ns: dict = {}
    solved = next(c for c in nbformat.read(str(SOLUTIONS / name), as_version=4).cells
                  if gen.grade_id(c) == "ex14_traffic_solution")
    for cell in nb.cells:
        if cell.cell_type == "code" and not gen.is_grade_cell(cell) and "check_exercise(" not in cell.source:
            exec(gen.python_source(cell.source), ns)
    exec(gen.python_source(solved.source), ns)
    path = tmp_path / name
    nbformat.write(nb, str(path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert grading.check_exercise(path, namespace=ns) == {"ex14_traffic": 2.0, "ex14_design": 0.0}
    assert "not answered" in out.getvalue() and "visible checks: 2 / 6 points (" in out.getvalue()
    next(c for c in nb.cells if gen.grade_id(c) == "ex14_design").source = "Two experts per GPU, because ..."
    nbformat.write(nb, str(path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert grading.check_exercise(path, namespace=ns) == {"ex14_traffic": 2.0, "ex14_design": None}
    assert "needs manual grading" in out.getvalue() and "2 / 6 points + 4 points graded by hand" in out.getvalue()


def test_the_self_check_cell_shows_only_its_printed_table():
    """check_exercise returns {part: points} for code, but a notebook shows no `Out[…]` for it:
    the printed table is the whole output of the self-check cell."""
    from IPython.core.interactiveshell import InteractiveShell

    from moe_lab.grading.selfcheck import Points

    points = Points({"ex1_gates": 2.0, "ex1_shapes": 0.0})
    assert points == {"ex1_gates": 2.0, "ex1_shapes": 0.0} and isinstance(points, dict)
    shell = InteractiveShell.instance()
    assert shell.display_formatter.format(points) == ({}, {})
    assert shell.display_formatter.format(dict(points))[0]  # a plain dict would show

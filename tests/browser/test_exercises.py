"""Exercises 1 and 3 worked in JupyterLab as a student works them: keyboard in the editor, run, read.

For each exercise, a copy of the student notebook (exercises/, never solutions/) is served from a
folder of its own. A plausible wrong answer is typed into the answer cell: the check it gets wrong
must show its own message (expected / got / a hint), not a torch traceback, and the checks it gets
right must say ✓. Then the solution is typed in (read from solutions/ here, in the test): every check
says ✓. Each time the notebook's self-check cell prints the points per part; the saved notebook is
then graded by the grader (`moe_lab.grading.grade`, sandboxed kernels, hidden checks included) and
the two must agree part by part.

The wrong answers are misconceptions whose parts score the same under the visible and the hidden
checks, so the self-check's promise ("predicts the grade") is what is tested:
- ex1: the gates as a softmax over only the k chosen logits: right for k > 1, but with k = 1 every
  gate is 1 and the router learns nothing;
- ex3: f_i counts only each token's first choice (the k = 1 formula used for k = 2), the
  common misconception: both visible checks (value and gradient) try k = 2, as the hidden
  ones do, so the self-check's 0 predicts the grader's.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from moe_lab.grading import generate as gen

from .conftest import REPO, kernel_eval, open_notebook, run_all
from .test_chapters import poll, shoot

pytestmark = pytest.mark.browser

TYPED_WAIT_S = 30
RUN_TIMEOUT_S = 180
GRADE_TIMEOUT_S = 300

WRONG = {
    "ex1_top_k_gating.ipynb": dict(
        answer='''\
def top_k_gating(logits, k):
    """Router logits [N, E] -> probs [N, E], gates [N, k], experts [N, k] (long, best first)."""
    probs = torch.softmax(logits.float(), dim=-1)  # [N, E]
    experts = torch.sort(probs.detach(), dim=-1, descending=True, stable=True).indices[:, :k]  # [N, k]
    gates = torch.softmax(logits.float().gather(1, experts), dim=-1)  # [N, k] softmax of the chosen logits
    return probs, gates, experts''',
        fails=("ex1_gates",),
        says=("with k = 1, gates[:, 0]: expected", "Hint: the gate is the probability itself, not 1"),
        graded=True,
    ),
    "ex3_aux_loss.ipynb": dict(
        answer='''\
def aux_loss(probs, experts, alpha):
    """L_aux = alpha * P * sum_i f_i * p_i as a 0-dim tensor, differentiable in probs [N, P]."""
    N, P = probs.shape
    f = torch.bincount(experts[:, 0], minlength=P).to(probs.dtype) / N  # [P] share of the first choices
    p = probs.mean(dim=0)  # [P]
    return alpha * P * torch.sum(f * p)''',
        fails=("ex3_value", "ex3_gradient"),
        says=("L_aux with k = 2: expected", "Hint: f_i counts every one of the N*k choices, not only the first"),
        graded=True,
    ),
}

_CELLS_JS = """
() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const out = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    const nb = cell.getMetadata('nbgrader') || {};
    out.push({index: i, type: cell.type, grade_id: nb.grade_id || null, grade: !!nb.grade,
              solution: !!nb.solution, points: nb.points || 0, source: cell.sharedModel.getSource()});
  }
  return out;
}
"""

_OUTPUTS_JS = """
(i) => {
  const cell = window.jupyterapp.shell.currentWidget.content.model.cells.get(i);
  const out = [];
  for (let j = 0; j < cell.outputs.length; j++) out.push(cell.outputs.get(j).toJSON());
  return out;
}
"""

_ALL_RAN_JS = """
() => {
  const w = window.jupyterapp.shell.currentWidget;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    if (cell.executionCount === null || cell.executionState === 'running') return false;
  }
  return !!kernel && kernel.status === 'idle';
}
"""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SELF_CHECK_LINE = re.compile(r"^([✓✗]) (\S+)\s+(\d+(?:\.\d+)?) / (\d+(?:\.\d+)?)", re.MULTILINE)


def solution_answer(exercise: str) -> str:
    """The source's solution cell, without its markers: what a student who solved it has typed."""
    cell = next(c for c in nbformat.read(str(REPO / "solutions" / exercise), as_version=4).cells
                if gen.is_solution_cell(c))
    lines = [line for line in cell.source.splitlines() if line.strip() not in (gen.BEGIN_SOLUTION, gen.END_SOLUTION)]
    return "\n".join(lines).rstrip()


def cell(page, index: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def type_answer(page, index: int, text: str) -> None:
    """Click into the cell's editor, select all, type `text` with the keyboard.

    After Enter the editor indents the new line by itself (deeper after a colon): Shift+Home selects
    that indentation, and the line is typed over it with its own, so the cell holds exactly `text`."""
    editor = cell(page, index).locator(".cm-content")
    editor.scroll_into_view_if_needed()
    editor.click()
    page.keyboard.press("Control+a")
    for i, line in enumerate(text.split("\n")):
        if i:
            page.keyboard.press("Enter")
            page.keyboard.press("Shift+Home")
        if line:
            page.keyboard.type(line)
    poll(page, lambda: (lambda src: (src == text, src))(page.evaluate(_CELLS_JS)[index]["source"]),
         TYPED_WAIT_S, f"cell {index} holds the typed answer:\n{text}\n--- it holds")


def save(page) -> None:
    """Ctrl+S, as a student saves; wait until the file on disk is the notebook in the page."""
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)


def run_every_cell(page) -> None:
    """Run all cells; the checks are tagged raises-exception, so a failing one does not stop the run."""
    run_all(page, timeout_s=RUN_TIMEOUT_S)
    page.wait_for_function(_ALL_RAN_JS, timeout=RUN_TIMEOUT_S * 1000, polling=200)


def shown(page, index: int) -> str:
    """The text the page shows under a cell (its output area)."""
    return cell(page, index).locator(".jp-OutputArea").inner_text()


def self_check_points(text: str) -> dict[str, float]:
    """{grade_id: points} from what check_exercise() printed."""
    points = {gid: float(got) for _, gid, got, _ in _SELF_CHECK_LINE.findall(text)}
    assert points, f"no points per part in the self-check's output:\n{text}"
    return points


def keep(lab_root: Path, relpath: str, where: Path) -> Path:
    """A copy of the saved notebook, as it is now, to grade later."""
    where.mkdir(parents=True)
    return Path(shutil.copy(lab_root / relpath, where / Path(relpath).name))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("exercise", sorted(WRONG), ids=[name.split("_")[0] for name in sorted(WRONG)])
def test_a_student_works_the_exercise(page, lab_server, exercise: str, tmp_path):
    from playwright.sync_api import expect  # here: without playwright the fixtures skip, not import

    from moe_lab import grading

    test = f"test_a_student_works_the_exercise_{exercise.split('_')[0]}"
    wrong = WRONG[exercise]
    folder = lab_server.root / f"student_{exercise.split('_')[0]}"  # a folder of its own: no solutions/ near it
    folder.mkdir()
    shutil.copy(REPO / "exercises" / exercise, folder / exercise)
    relpath = f"{folder.name}/{exercise}"
    open_notebook(page, lab_server, relpath)

    cells = page.evaluate(_CELLS_JS)
    assert page.locator(".jp-Notebook .jp-Cell").count() == len(cells)  # every cell is in the page
    [answer] = [c["index"] for c in cells if c["solution"]]
    checks = {c["grade_id"]: c["index"] for c in cells if c["grade"]}
    [self_check] = [c["index"] for c in cells if c["type"] == "code" and "check_exercise(" in c["source"]]
    assert set(wrong["fails"]) <= set(checks), (wrong["fails"], checks)
    assert "solutions" not in kernel_eval(page, "import os; print(sorted(os.listdir('.')))")
    kept: dict[str, dict[str, float]] = {}

    # 1. a wrong answer: its check shows its own message; the checks it gets right say ✓
    type_answer(page, answer, wrong["answer"])
    save(page)
    run_every_cell(page)
    first = wrong["fails"][0]  # the first failing check; its message is the one to read
    failing = cell(page, checks[first])
    for text in wrong["says"]:
        expect(failing.locator(".jp-OutputArea")).to_contain_text(text, timeout=30_000)
    shoot(page, failing, test, "1_wrong_answer_hint")
    [error] = [o for o in page.evaluate(_OUTPUTS_JS, checks[first]) if o["output_type"] == "error"]
    traceback = _ANSI.sub("", "\n".join(error["traceback"]))
    assert error["ename"] == "AssertionError" and all(t in error["evalue"] for t in wrong["says"]), error
    assert "site-packages/torch" not in traceback, f"a torch traceback instead of the check's message:\n{traceback}"
    for gid, index in checks.items():
        if gid not in wrong["fails"]:
            expect(cell(page, index).locator(".jp-OutputArea")).to_contain_text(re.compile(r"✓ .+ \(\d+ points?\)"))
    expect(cell(page, self_check).locator(".jp-OutputArea")).to_contain_text("visible checks:", timeout=30_000)
    wrong_points = self_check_points(shown(page, self_check))
    print(f"{exercise}, wrong answer: self-check {wrong_points}")
    assert all(wrong_points[gid] == 0 for gid in wrong["fails"]), wrong_points
    assert all(wrong_points[gid] > 0 for gid in checks if gid not in wrong["fails"]), wrong_points
    shoot(page, cell(page, self_check), test, "2_wrong_answer_self_check")
    if wrong["graded"]:
        save(page)
        kept["wrong"] = wrong_points
        keep(lab_server.root, relpath, tmp_path / "wrong")

    # 2. the right answer, typed over the wrong one: every check says ✓
    type_answer(page, answer, solution_answer(exercise))
    save(page)
    run_every_cell(page)
    for gid, index in checks.items():
        expect(cell(page, index).locator(".jp-OutputArea")).to_contain_text(re.compile(r"✓ .+ \(\d+ points?\)"),
                                                                                timeout=30_000)
        assert not [o for o in page.evaluate(_OUTPUTS_JS, index) if o["output_type"] == "error"], gid
    shoot(page, cell(page, checks[first]), test, "3_right_answer_check")
    expect(cell(page, self_check).locator(".jp-OutputArea")).to_contain_text("visible checks:", timeout=30_000)
    right_points = self_check_points(shown(page, self_check))
    shoot(page, cell(page, self_check), test, "4_right_answer_self_check")
    print(f"{exercise}, right answer: self-check {right_points}")
    possible = {gid: float(cells[index]["points"]) for gid, index in checks.items()}
    assert right_points == possible, (right_points, possible)
    save(page)  # the outputs too, as a student hands it in
    kept["right"] = right_points
    keep(lab_server.root, relpath, tmp_path / "right")

    # 3. the grader, on the saved notebooks: the same points, part by part
    t0 = time.monotonic()
    results = grading.grade([tmp_path / name for name in kept], REPO / "solutions", jobs=len(kept),
                            report=lambda text: print(f"[grade] {text}"))
    print(grading.format_table(results))
    print(f"graded {len(results)} notebook(s) in {time.monotonic() - t0:.1f} s")
    assert len(results) == len(kept), results
    for result in results:
        which = Path(result.notebook).parent.name
        graded = {p.grade_id: p.points for p in result.parts}
        assert graded == kept[which], f"{which} answer: self-check {kept[which]}, grader {graded}\n" \
                                      + grading.format_table([result])

"""A student's self-check, from inside the notebook: the visible checks, counted as the grader counts.

    from moe_lab.grading import check_exercise
    check_exercise()          # or check_exercise("ex1_top_k_gating.ipynb")

Runs every check cell of the notebook (as saved on disk: save first) in the kernel's own namespace,
so it checks the answers the kernel holds now, and prints each part's points: a part earns its
points when its checks pass, as in the grader. The grader also runs hidden checks on other inputs,
so this predicts the grade without promising it. Works from any folder; needs nothing from
solutions/ (the student's copy has no hidden checks to run).

A written answer (a markdown answer cell, graded by hand) is reported as the grader reports it:
"needs manual grading" once the cell holds an answer (None in the returned dict: not yet known),
"not answered" (0) while it holds only "YOUR ANSWER HERE".
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from . import generate as gen
from .report import MANUAL, UNANSWERED


def _find_notebook(ns: dict) -> Path:
    """The notebook this kernel runs: Jupyter tells the kernel (`__session__`), else the one exercise
    in the current folder whose answers the kernel defines."""
    for candidate in (ns.get("__session__"), os.environ.get("JPY_SESSION_NAME")):
        if candidate and str(candidate).endswith(".ipynb") and Path(candidate).is_file():
            return Path(candidate)
    matches = []
    for path in sorted(Path.cwd().glob("*.ipynb")):
        try:
            nb = gen.read_notebook(path)
        except Exception:
            continue
        answers = [c for c in nb.cells if gen.is_solution_cell(c) and c.cell_type == "code"]
        if answers and all(_defined(c, ns) for c in answers):
            matches.append(path)
    if len(matches) > 1:  # several exercises define these names: the one whose cells this kernel ran
        ran = {src.strip() for src in ns.get("In", []) if isinstance(src, str)}
        score = {path: sum(c.source.strip() in ran for c in gen.read_notebook(path).cells if c.cell_type == "code")
                 for path in matches}
        best = max(score.values())
        matches = [path for path in matches if score[path] == best]
    if len(matches) != 1:
        raise ValueError("could not tell which notebook this is: call check_exercise('exN_name.ipynb') "
                         f"with its file name (candidates here: {[p.name for p in matches] or 'none'})")
    return matches[0]


def _defined(cell, ns: dict) -> bool:
    import ast

    first = cell.source.partition("\n")[0].strip()
    if first.startswith("%%writefile"):  # a module the notebook wrote and has imported
        return Path(first.split()[-1]).stem in sys.modules and Path(first.split()[-1]).is_file()
    try:
        tree = ast.parse(gen.python_source(cell.source))
    except SyntaxError:
        return False
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return bool(names) and all(n in ns for n in names)


class Points(dict):
    """{part: points}, as check_exercise returns it: a notebook shows nothing more for it (the
    table was printed), so the self-check cell has no stray `Out[…]` line."""

    def _ipython_display_(self) -> None:
        pass


def check_exercise(notebook=None, namespace: dict | None = None) -> Points:
    """Run the notebook's visible checks on the kernel's answers; print and return {part: points}
    (None for a written answer that waits for a person)."""
    if namespace is None:
        namespace = sys._getframe(1).f_globals  # the notebook's globals, where the answers live
    # the name the notebook passes; a student's renamed copy is found by the answers it defines
    path = Path(notebook) if notebook and Path(notebook).is_file() else _find_notebook(namespace)
    nb = gen.read_notebook(path)
    earned, possible, by_hand = {}, 0.0, 0.0
    for cell in nb.cells:
        if not gen.is_grade_cell(cell):
            continue
        gid, points = gen.grade_id(cell), float(gen.nbgrader_meta(cell).get("points", 0))
        possible += points
        if gen.is_written_cell(cell):  # read as saved on disk: save the notebook first
            if gen.is_answered(cell.source):
                print(f"✎ {gid:<24} - / {points:g}   {MANUAL}: a person grades this written answer")
                earned[gid], by_hand = None, by_hand + points
            else:
                print(f"✗ {gid:<24} 0 / {points:g}   {UNANSWERED}: write your answer in its cell (then save)")
                earned[gid] = 0.0
            continue
        source = gen.strip_hidden_tests(cell.source)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(source, f"<{gid}>", "exec"), namespace)
        except Exception as e:
            text = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
            print(f"✗ {gid:<24} 0 / {points:g}   {text}")
            earned[gid] = 0.0
        else:
            print(f"✓ {gid:<24} {points:g} / {points:g}")
            earned[gid] = points
    hand = f" + {by_hand:g} points graded by hand" if by_hand else ""
    print(f"visible checks: {sum(v for v in earned.values() if v):g} / {possible:g} points{hand} "
          "(the grader also runs hidden checks on other inputs)")
    return Points(earned)

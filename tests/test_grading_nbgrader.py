"""nbgrader stays a first-class path: the real nbgrader, on the source notebooks, gives the solutions
full marks and the stubs zero (`generate_assignment`, then `autograde` of two students).

nbgrader is the optional extra `nbgrader` (`pip install -e '.[nbgrader]'`; `make test` installs it).
It runs the notebooks in its own unsandboxed kernels: this test checks that the exercise format is
nbgrader's, not that nbgrader is safe (it documents that it is not; `python -m moe_lab grade` is).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbgrader", reason="the optional extra `nbgrader` is not installed (make test installs it)")

REPO = Path(__file__).resolve().parents[1]
# the cheapest exercises (kernels start once per notebook per student), and ex14 for its written answer
NAMES = ["ex1_top_k_gating", "ex4_alltoall_splits", "ex14_place_the_experts"]
WRITTEN = 4  # ex14's points graded by hand: nbgrader leaves them to a person, as `moe_lab grade` does


def nbgrader(course: Path, *args: str) -> str:
    # nbgrader runs `alembic` from the environment's bin folder
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--force"], cwd=course, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.timeout(900)
def test_nbgrader_autograde_gives_solutions_full_marks_and_stubs_zero(tmp_path):
    course = tmp_path / "course"
    (course / "source" / "ps1").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'moe_lab'\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.ExecutePreprocessor.timeout = 300\n", encoding="utf-8")
    for name in NAMES:
        shutil.copy(REPO / "solutions" / f"{name}.ipynb", course / "source" / "ps1")
    nbgrader(course, "generate_assignment", "ps1")
    for student, folder in (("solved", course / "source" / "ps1"), ("stub", course / "release" / "ps1")):
        dest = course / "submitted" / student / "ps1"
        dest.mkdir(parents=True)
        for name in NAMES:
            shutil.copy(folder / f"{name}.ipynb", dest)
        (dest / "timestamp.txt").write_text("2026-01-01 00:00:00.000000 UTC", encoding="utf-8")
    nbgrader(course, "autograde", "ps1", "--create")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        solved = gb.find_submission("ps1", "solved")
        stub = gb.find_submission("ps1", "stub")
        assert solved.max_score == sum(nb.max_score for nb in solved.notebooks) > 0
        assert solved.score == solved.max_score - WRITTEN, [(n.name, n.score) for n in solved.notebooks]
        assert stub.score == 0, [(n.name, n.score) for n in stub.notebooks]
        # the written answer: waiting for a person when written, 0 at once when left as the stub
        written = gb.find_grade("ex14_design", "ex14_place_the_experts", "ps1", "solved")
        assert written.needs_manual_grade and written.auto_score is None and written.max_score == WRITTEN
        untouched = gb.find_grade("ex14_design", "ex14_place_the_experts", "ps1", "stub")
        assert not untouched.needs_manual_grade and untouched.score == 0

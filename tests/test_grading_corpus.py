"""Submissions that try to get marks without the work, or to harm the run, get what they earned.

Each file in tests/grading_corpus/ is one answer cell with a header:

    # exercise: ex1_top_k_gating        the exercise whose student copy it goes into
    # score: 0                          the score it must get
    # says: uses moe_lab.routing...     (optional) text its block of the score table must show
    # build: no-source | duplicate | other-exercise ex3_aux_loss   (optional) how to break the notebook
    # cell: ex4_recv_counts_solution    (optional) the lines below it go into that answer cell

All of them are graded in ONE run of `python -m moe_lab grade --jobs 2`, as a class would be, so
honest submissions are graded next to the attacks (and after a startup-file attack) and must keep
full marks. Afterwards no process a submission started may be alive, and the score file must be
as the grader wrote it.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from moe_lab.grading import generate as gen
from moe_lab.grading.sandbox import why_no_sandbox

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "grading_corpus"
EXERCISES = REPO / "exercises"
SOLUTIONS = REPO / "solutions"
MARKERS = ("4242.4242", "rewrite_scores")  # command lines of processes the corpus starts


def _header(path: Path) -> dict:
    head = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"# (exercise|score|says|build): (.*)", line)
        if m:
            head[m.group(1)] = m.group(2).strip()
    return head


CASES = sorted(CORPUS.glob("*.py"))


def _build(path: Path, out: Path) -> Path:
    """The submission notebook for one corpus file; returns where it was written."""
    head = _header(path)
    exercise = head["exercise"]
    build = head.get("build", "")
    if build.startswith("other-exercise"):
        other = build.split()[1]
        target = out / path.stem / f"{exercise}.ipynb"  # the right name, another exercise's cells
        target.parent.mkdir()
        target.write_bytes((SOLUTIONS / f"{other}.ipynb").read_bytes())
        return target
    nb = nbformat.read(str(EXERCISES / f"{exercise}.ipynb"), as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if gen.is_solution_cell(c) and c.cell_type == "code")
    body = path.read_text(encoding="utf-8")
    if build == "duplicate":
        nb.cells.insert(i + 1, copy.deepcopy(nb.cells[i]))
        i += 1
    parts = re.split(r"^# cell: (\S+)\n", body, flags=re.MULTILINE)
    nb.cells[i].source = parts[0]
    for gid, text in zip(parts[1::2], parts[2::2]):
        next(c for c in nb.cells if gen.grade_id(c) == gid).source = text
    target = out / f"{path.stem}__{exercise}.ipynb"
    raw = json.loads(nbformat.writes(nb))
    if build == "no-source":
        del raw["cells"][i]["source"]
    target.write_text(json.dumps(raw), encoding="utf-8")
    return target


def _alive(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and "pytest" not in cmd:
            found.append(f"{pid}: {cmd[:100]}")
    return found


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    if why_no_sandbox():
        pytest.skip(f"no sandbox here: {why_no_sandbox()}")
    root = tmp_path_factory.mktemp("corpus")
    subs = root / "submissions"
    subs.mkdir()
    built = {path.stem: _build(path, subs) for path in CASES}
    home = Path.home() / ".ipython" / "profile_default" / "startup" / "00-pass.py"
    assert not home.exists()
    scores = root / "scores.csv"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "moe_lab", "grade", str(subs), "--jobs", "2", "--out", str(scores),
                           "--cell-timeout", "60"], cwd=root, env=env, capture_output=True, text=True, timeout=1700)
    elapsed = time.monotonic() - started
    written = scores.read_text(encoding="utf-8") if scores.exists() else ""
    rows = {Path(r["notebook"]).relative_to(subs).as_posix(): r for r in csv.DictReader(written.splitlines())}
    blocks = {}
    for block in proc.stdout.split("\n\n"):
        first = block.strip().splitlines()[0] if block.strip() else ""
        for stem, path in built.items():
            if first.startswith(str(path)):
                blocks[stem] = block
    return dict(proc=proc, built=built, rows=rows, blocks=blocks, subs=subs, scores=scores, written=written,
                elapsed=elapsed, home=home)


def test_the_corpus_covers_every_attack_class():
    names = {p.stem for p in CASES}
    assert len(names) >= 15
    for needed in ("honest", "honest_loops", "read_solutions", "delegate_library", "input_transformer",
                   "ast_transformer", "monkeypatch", "always_equal", "escape_process", "proc_snoop",
                   "rewrite_scores", "ipython_startup", "kill_grader", "memory_bomb", "output_flood",
                   "missing_source", "duplicated_cell", "wrong_exercise"):
        assert needed in names, needed


@pytest.mark.timeout(1800)  # the whole corpus is graded in the first test that asks for it
def test_the_run_finishes_with_a_table_and_a_score_file(corpus_run):
    proc = corpus_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(corpus_run["rows"]) == len(CASES), corpus_run["written"]
    print(f"corpus: {len(CASES)} submissions graded in {corpus_run['elapsed']:.0f} s with --jobs 2")


@pytest.mark.parametrize("case", [p.stem for p in CASES])
def test_each_submission_gets_the_score_it_earned(corpus_run, case):
    head = _header(CORPUS / f"{case}.py")
    path = corpus_run["built"][case]
    row = corpus_run["rows"][path.relative_to(corpus_run["subs"]).as_posix()]
    block = corpus_run["blocks"].get(case, "")
    assert float(row["score"]) == float(head["score"]), block or corpus_run["proc"].stdout[-2000:]
    if "says" in head:
        assert head["says"] in block, block


def test_no_process_started_by_a_submission_outlives_grading(corpus_run):
    for marker in MARKERS:
        assert _alive(marker) == [], marker


def test_the_score_file_cannot_be_changed_from_inside(corpus_run):
    time.sleep(10)  # the rewrite_scores attack waits 8 s before it writes
    assert corpus_run["scores"].read_text(encoding="utf-8") == corpus_run["written"]
    assert not corpus_run["home"].exists(), "a submission wrote an IPython startup file into the grader's HOME"
    assert not Path(f"{corpus_run['scores']}.progress.jsonl").exists()


@pytest.mark.parametrize("case", ["honest", "honest_loops", "detached_gates"])
def test_the_self_check_counts_what_the_grader_gives_an_honest_answer(corpus_run, case):
    """check_exercise() runs only the visible checks; for an answer that is what it seems (no
    memorised outputs) its points are the grader's."""
    from moe_lab.grading import check_exercise

    path = corpus_run["built"][case]
    nb = nbformat.read(str(path), as_version=4)
    ns: dict = {"__name__": "__main__"}
    for cell in nb.cells:  # what "Run All" leaves in the kernel before the self-check cell
        if cell.cell_type == "code" and not gen.is_grade_cell(cell) and "check_exercise(" not in cell.source:
            exec(compile(cell.source, str(path), "exec"), ns)
    earned = check_exercise(path, namespace=ns)
    row = corpus_run["rows"][path.relative_to(corpus_run["subs"]).as_posix()]
    assert sum(earned.values()) == float(row["score"]), (earned, row)

"""The grader gives the points a submission earned, and nothing else.

Full marks for every solution, zero for every untouched stub, exactly the parts a student solved;
deleted or rewritten checks change nothing; hanging and kernel-killing submissions are cut off
and keep what they earned before. Fake submissions are built here from the committed notebooks,
so they follow the exercises as they change.

Kernels are slow to start on a small machine, so each test module grades its submissions in as
few `grade` calls as it can and the tests read the shared results.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import os
import re
import time
from pathlib import Path

import nbformat
import pytest

from moe_lab.grading import generate as gen
from moe_lab import grading
from moe_lab.grading import grader

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"
SOLUTION_NAMES = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))


# --------------------------------------------------------------------------- building submissions


def read(path):
    return nbformat.read(str(path), as_version=4)


def answer(exercise: str, gid: str) -> str:
    """The source's solution for one solution cell, without the markers (what a student writes)."""
    cell = next(c for c in read(SOLUTIONS / exercise).cells if gen.grade_id(c) == gid)
    return "\n".join(line for line in cell.source.splitlines() if line.strip() not in (gen.BEGIN_SOLUTION, gen.END_SOLUTION))


def submission(exercise: str, answers: dict[str, str]):
    """The student copy of `exercise` with some solution cells answered."""
    nb = read(EXERCISES / exercise)
    for cell in nb.cells:
        if gen.grade_id(cell) in answers:
            cell.source = answers[gen.grade_id(cell)]
    return nb


def save(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def solution_cell_ids(exercise: str) -> list[str]:
    return [gen.grade_id(c) for c in read(SOLUTIONS / exercise).cells if gen.is_solution_cell(c)]


def parts_of(exercise: str) -> dict[str, float]:
    return dict(gen.graded_parts(read(SOLUTIONS / exercise)))


def written_of(exercise: str) -> dict[str, float]:
    """The parts graded by hand (written answers): in the maximum, never in the grader's score."""
    return {gid: pts for gid, pts, _ in gen.written_parts(read(SOLUTIONS / exercise))}


# A wrong top_k_gating: every check it meets fails.
WRONG_TOP_K = '''
def top_k_gating(logits, k):
    experts = torch.arange(k).expand(logits.shape[0], k)
    return logits, torch.ones(logits.shape[0], k), experts
'''.strip()


def tampered_ex1():
    """Wrong answer; every check cell replaced by a print, one deleted; nbgrader metadata gone."""
    nb = submission("ex1_top_k_gating.ipynb", {"ex1_top_k_gating_solution": WRONG_TOP_K})
    keep = []
    for cell in nb.cells:
        if gen.grade_id(cell) == "ex1_ties":
            continue  # deleted
        if gen.is_grade_cell(cell):
            cell.source = 'print("All tests passed")'
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="All tests passed\n")]
        cell.metadata.pop("nbgrader", None)
        keep.append(cell)
    nb.cells = keep
    return nb


def stripped_ex3():
    """A correct answer in a notebook whose metadata, cell ids and check cells are all gone."""
    nb = submission("ex3_aux_loss.ipynb", {"ex3_aux_loss_solution": answer("ex3_aux_loss.ipynb", "ex3_aux_loss_solution")})
    nb.cells = [c for c in nb.cells if not gen.is_grade_cell(c)]
    for cell in nb.cells:
        cell.metadata = {}
        cell.pop("id", None)
    nb.nbformat_minor = 4  # no cell ids in 4.4
    return nb


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """One `grade` call over solved, untouched and doctored submissions; its CSV rows and table."""
    root = tmp_path_factory.mktemp("submitted")
    for name in SOLUTION_NAMES:
        save(read(SOLUTIONS / name), root / "solved" / name)
        save(read(EXERCISES / name), root / "untouched" / name)
    ex2, ex5 = "ex2_capacity_and_drops.ipynb", "ex5_combine.ipynb"
    save(submission(ex2, {"ex2_capacity_solution": answer(ex2, "ex2_capacity_solution")}), root / "one_part" / ex2)
    save(tampered_ex1(), root / "tampered" / "ex1_top_k_gating.ipynb")
    save(stripped_ex3(), root / "stripped" / "alice_ex3_aux_loss.ipynb")
    save(submission(ex5, {
        "ex5_inverse_order_solution": answer(ex5, "ex5_inverse_order_solution"),
        "ex5_combine_solution": "def combine(buffer_out, order, gates, expert):\n    import os\n    os.kill(os.getpid(), 9)",
    }), root / "killed" / ex5)
    save(submission(ex2, {
        "ex2_capacity_solution": answer(ex2, "ex2_capacity_solution"),
        "ex2_drop_slots_solution": "def drop_slots(experts, num_experts, capacity):\n    import os\n    os._exit(1)",
    }), root / "exited" / ex2)
    out = root / "scores.csv"
    stdout = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(stdout):
        code = grading.main(["grade", str(root), "--out", str(out), "--solutions", str(SOLUTIONS),
                             "--jobs", "2", "--cell-timeout", "60", "--timeout", "180"])
    elapsed = time.monotonic() - start
    with open(out, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
        f.seek(0)
        rows = {Path(r["notebook"]).relative_to(root).as_posix(): r for r in csv.DictReader(f)}
    return dict(code=code, rows=rows, header=header, table=stdout.getvalue(), elapsed=elapsed, root=root)


def row(main_run, key):
    return main_run["rows"][key]


def block(table: str, key: str) -> str:
    """The table's lines for one notebook."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace("\\", "/").split("  (")[0].endswith(key))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return "\n".join(lines[start:end])


# --------------------------------------------------------------------------- grading, end to end


def test_grading_completes_with_exit_code_zero(main_run):
    assert main_run["code"] == 0
    print(f"graded {len(main_run['rows'])} notebooks in {main_run['elapsed']:.1f} s")


@pytest.mark.parametrize("name", SOLUTION_NAMES)
def test_every_solution_scores_full_marks(main_run, name):
    r = row(main_run, f"solved/{name}")
    parts, written = parts_of(name), written_of(name)
    assert float(r["max_score"]) == sum(parts.values()), r
    assert float(r["score"]) == sum(parts.values()) - sum(written.values()), r
    assert float(r["by_hand"]) == sum(written.values()), r  # the written answers wait for a person
    for gid, points in parts.items():
        assert r[gid] == "" if gid in written else float(r[gid]) == points, (gid, r)


@pytest.mark.parametrize("name", SOLUTION_NAMES)
def test_every_untouched_exercise_scores_zero_on_every_part(main_run, name):
    r = row(main_run, f"untouched/{name}")
    assert float(r["score"]) == 0 and float(r["max_score"]) == sum(parts_of(name).values())
    assert float(r["by_hand"]) == 0  # an untouched written answer is "not answered": nothing to grade
    for gid in parts_of(name):
        assert float(r[gid]) == 0, (gid, r)
    assert "NotImplementedError" in block(main_run["table"], f"untouched/{name}")


def test_a_submission_with_one_part_solved_scores_exactly_that_part(main_run):
    r = row(main_run, "one_part/ex2_capacity_and_drops.ipynb")
    assert (r["ex2_capacity"], r["ex2_dropped"], r["ex2_slots"]) == ("2", "0", "0")
    assert (r["score"], r["max_score"]) == ("2", "5")


def test_deleted_or_rewritten_checks_still_run_the_hidden_checks(main_run):
    r = row(main_run, "tampered/ex1_top_k_gating.ipynb")
    assert (r["score"], r["max_score"]) == ("0", "5")
    assert r["ex1_ties"] == "0"  # the deleted check cell came back from the source
    text = block(main_run["table"], "tampered/ex1_top_k_gating.ipynb")
    assert "AssertionError" in text and "All tests passed" not in text


def test_an_answer_is_found_without_metadata_or_matching_file_name(main_run):
    r = row(main_run, "stripped/alice_ex3_aux_loss.ipynb")
    assert (r["score"], r["max_score"]) == ("4", "4"), r


def test_a_kernel_killed_by_the_submission_keeps_what_was_earned(main_run):
    r = row(main_run, "killed/ex5_combine.ipynb")
    assert (r["ex5_inverse"], r["ex5_combine"], r["score"]) == ("2", "0", "2")
    assert "kernel died" in block(main_run["table"], "killed/ex5_combine.ipynb")
    r = row(main_run, "exited/ex2_capacity_and_drops.ipynb")
    assert (r["ex2_capacity"], r["ex2_dropped"], r["ex2_slots"], r["score"]) == ("2", "0", "0", "2")
    text = block(main_run["table"], "exited/ex2_capacity_and_drops.ipynb")
    assert "not run: the kernel died in an earlier cell" in text


def test_csv_has_one_row_per_notebook_and_one_column_per_part(main_run):
    expected_parts = [gid for name in SOLUTION_NAMES for gid in parts_of(name)]
    assert main_run["header"] == ["notebook", "score", "max_score", "by_hand", *expected_parts]
    assert len(main_run["rows"]) == 2 * len(SOLUTION_NAMES) + 5
    one = row(main_run, "untouched/ex4_alltoall_splits.ipynb")
    assert one["ex1_choices"] == "" and one["ex4_send_counts"] == "0"  # parts of other notebooks stay empty


# --------------------------------------------------------------------------- time limits


def _alive_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmd and state not in ("Z", "X") and "pytest" not in cmd:
            found.append(int(pid))
    return found


def test_hanging_submissions_are_cut_off_and_leave_no_process_behind(tmp_path):
    ex2, ex4 = "ex2_capacity_and_drops.ipynb", "ex4_alltoall_splits.ipynb"
    # An ordinary infinite loop in the first part: interrupted, and the later parts still count.
    save(submission(ex2, {
        "ex2_capacity_solution": "def capacity(num_tokens, num_experts, capacity_factor, k=1):\n    while True:\n        pass",
        "ex2_drop_slots_solution": answer(ex2, "ex2_drop_slots_solution"),
    }), tmp_path / "loop" / ex2)
    # A loop that ignores interrupts, after starting a child process: cut off, everything killed.
    stuck = '''def recv_counts(counts, world_size):
    import signal, subprocess, time
    subprocess.Popen(["sleep", "313.1313"], start_new_session=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        time.sleep(0.05)'''
    save(submission(ex4, {
        "ex4_send_counts_solution": answer(ex4, "ex4_send_counts_solution"),
        "ex4_recv_counts_solution": stuck,
    }), tmp_path / "stuck" / ex4)
    cell_timeout = 15  # room for a check's own work on a busy machine; the hangs cost this much
    start = time.monotonic()
    results = grading.grade([tmp_path], SOLUTIONS, cell_timeout=cell_timeout, notebook_timeout=120, jobs=2)
    elapsed = time.monotonic() - start
    by_name = {Path(r.notebook).parent.name: r for r in results}

    loop = {p.grade_id: p for p in by_name["loop"].parts}
    assert loop["ex2_capacity"].status == "timed out" and loop["ex2_capacity"].points == 0
    assert loop["ex2_dropped"].points == 2 and loop["ex2_slots"].points == 1
    assert by_name["loop"].score == 3

    stuck_parts = {p.grade_id: p for p in by_name["stuck"].parts}
    assert stuck_parts["ex4_send_counts"].points == 3  # earned before the hang
    assert stuck_parts["ex4_recv_counts"].status == "timed out", stuck_parts["ex4_recv_counts"]
    assert "ignored the interrupt" in stuck_parts["ex4_recv_counts"].message
    assert by_name["stuck"].score == 3
    print(f"two hanging submissions graded in {elapsed:.1f} s")
    assert _alive_with("313.1313") == [], "a process started by the submission outlived grading"


# --------------------------------------------------------------------------- assembling (no kernel)


def test_the_graded_notebook_takes_answers_from_the_submission_and_checks_from_the_source():
    name = "ex1_top_k_gating.ipynb"
    source = read(SOLUTIONS / name)
    graded = gen.assemble(source, tampered_ex1(), name)
    assert len(graded.cells) == len(source.cells)
    for src, cell in zip(source.cells, graded.cells):
        if gen.is_solution_cell(src):
            assert cell.source == WRONG_TOP_K
        else:
            assert cell.source == src.source  # hidden tests included
    assert any(gen.BEGIN_HIDDEN in c.source for c in graded.cells)


def test_a_missing_answer_is_graded_as_the_stub():
    name = "ex4_alltoall_splits.ipynb"
    sub = read(EXERCISES / name)
    sub.cells = [c for c in sub.cells if gen.grade_id(c) != "ex4_recv_counts_solution"]
    graded = gen.assemble(read(SOLUTIONS / name), sub, name)
    cell = next(c for c in graded.cells if gen.grade_id(c) == "ex4_recv_counts_solution")
    assert "raise NotImplementedError" in cell.source and "def recv_counts(counts, world_size):" in cell.source


def test_submissions_are_matched_by_name_then_grade_ids_then_name_fragment():
    sources = gen.load_sources(SOLUTIONS)
    ex3 = read(EXERCISES / "ex3_aux_loss.ipynb")
    assert gen.match_source(Path("x/ex3_aux_loss.ipynb"), ex3, sources) == "ex3_aux_loss.ipynb"
    assert gen.match_source(Path("x/homework.ipynb"), ex3, sources) == "ex3_aux_loss.ipynb"
    assert gen.match_source(Path("x/bob_ex4_alltoall_splits (1).ipynb"), None, sources) == "ex4_alltoall_splits.ipynb"
    assert gen.match_source(Path("x/notes.ipynb"), nbformat.v4.new_notebook(), sources) is None


def test_unreadable_and_unknown_notebooks_are_reported_not_fatal(tmp_path):
    (tmp_path / "ex1_top_k_gating.ipynb").write_text("{ not json", encoding="utf-8")
    save(nbformat.v4.new_notebook(), tmp_path / "scratch.ipynb")
    said = []
    results = grading.grade([tmp_path], SOLUTIONS, report=said.append)  # no kernel starts for either
    assert said == ["grade: skipped 1 notebook(s) in the given folders that are not exercises"]
    results += grading.grade([tmp_path / "scratch.ipynb"], SOLUTIONS, report=said.append)  # named: reported
    by_name = {Path(r.notebook).name: r for r in results}
    broken = by_name["ex1_top_k_gating.ipynb"]
    assert broken.score == 0 and broken.max_score == 5 and "could not read" in broken.note
    assert by_name["scratch.ipynb"].source is None and by_name["scratch.ipynb"].max_score is None
    assert "not an exercise" in by_name["scratch.ipynb"].note
    out = tmp_path / "scores.csv"
    grading.write_csv(results, out)
    assert out.read_text().splitlines()[0] == "notebook,score,max_score,by_hand,ex1_choices,ex1_gates,ex1_ties"
    assert re.search(r"scratch\.ipynb,0,,,", out.read_text())


def test_score_table_lists_every_part_and_the_total():
    result = grading.Result("sub/ex4_alltoall_splits.ipynb", "ex4_alltoall_splits.ipynb", [
        grading.Part("ex4_send_counts", 3, 3, "passed"),
        grading.Part("ex4_recv_counts", 2, 0, "failed", "AssertionError: rank 0 receives 5"),
    ])
    table = grading.format_table([result])
    assert "ex4_send_counts" in table and "3 / 3" in table
    assert "0 / 2" in table and "AssertionError: rank 0 receives 5" in table
    assert re.search(r"total\s+3 / 5$", table, re.MULTILINE)


def test_a_written_part_is_neither_scored_nor_zero_and_the_total_says_what_is_left(tmp_path):
    """A written answer waits for a person: "-" in the table, empty in its CSV column, in by_hand."""
    result = grading.Result("sub/ex14_place_the_experts.ipynb", "ex14_place_the_experts.ipynb", [
        grading.Part("ex14_traffic", 2, 2, "passed"),
        grading.Part("ex14_design", 4, 0, "needs manual grading", "a written answer"),
    ])
    empty = grading.Result("sub2/ex14_place_the_experts.ipynb", "ex14_place_the_experts.ipynb", [
        grading.Part("ex14_traffic", 2, 0, "failed", "AssertionError"),
        grading.Part("ex14_design", 4, 0, "not answered", "the answer cell is empty"),
    ])
    assert (result.score, result.max_score, result.by_hand) == (2, 6, 4)
    assert (empty.score, empty.max_score, empty.by_hand) == (0, 6, 0)
    table = grading.format_table([result, empty])
    assert re.search(r"ex14_design\s+- / 4\s+needs manual grading", table)
    assert re.search(r"total\s+2 / 6\s+\+ 4 points graded by hand", table)
    assert re.search(r"ex14_design\s+0 / 4\s+not answered", table) and re.search(r"total\s+0 / 6$", table, re.M)
    out = tmp_path / "scores.csv"
    grading.write_csv([result, empty], out)
    assert out.read_text().splitlines() == ["notebook,score,max_score,by_hand,ex14_traffic,ex14_design",
                                            "sub/ex14_place_the_experts.ipynb,2,6,4,2,",
                                            "sub2/ex14_place_the_experts.ipynb,0,6,0,0,0"]


def test_a_deep_copy_of_the_source_is_graded_not_the_source_itself():
    name = "ex2_capacity_and_drops.ipynb"
    source = read(SOLUTIONS / name)
    before = copy.deepcopy(source)
    gen.assemble(source, read(EXERCISES / name), name)
    assert source == before


def test_grading_works_inside_a_running_event_loop(tmp_path):
    """Instructors grade from a notebook, where an event loop is already running."""
    import asyncio
    import shutil

    from moe_lab import grading

    sub = tmp_path / "ex1_top_k_gating.ipynb"
    shutil.copy(grader._REPO / "solutions" / "ex1_top_k_gating.ipynb", sub)

    async def inside_a_loop():
        return grading.grade([sub], grader._REPO / "solutions", cell_timeout=60)

    import concurrent.futures

    # a thread of its own, so the test also runs when the session already has a loop (browser tests)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        [result] = pool.submit(asyncio.run, inside_a_loop()).result()
    assert result.score == result.max_score > 0

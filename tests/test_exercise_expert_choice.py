"""Exercise 8 (expert choice) is graded by what the answer does: the solution earns every point, the
untouched stub none, an answer built on a real misconception less than full, and an answer that
calls the library's expert-choice routing earns nothing for that part. One `grade` call for all."""
from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import nbformat
import pytest

from moe_lab import grading
from moe_lab.grading import generate as gen

REPO = Path(__file__).resolve().parents[1]
NAME = "ex8_expert_choice.ipynb"
SOLUTION, EXERCISE = REPO / "solutions" / NAME, REPO / "exercises" / NAME

# The misconception: renormalising each token's gates to sum to 1, as top-k token choice does.
RENORMALISED = '''
def expert_choice_layer(x, router_w, w_in, w_out, capacity):
    probs = torch.softmax(x @ router_w, dim=-1)
    tokens = pick_tokens(probs, capacity)
    picked = torch.zeros_like(probs)
    for e in range(probs.shape[1]):
        picked[tokens[e], e] = 1.0
    gates = probs * picked
    gates = gates / gates.sum(-1, keepdim=True).clamp_min(1e-9)
    y = torch.zeros_like(x)
    for e in range(probs.shape[1]):
        t = tokens[e]
        y = y.index_add(0, t, gates[t, e].unsqueeze(1) * expert_ffn(x[t], w_in[e], w_out[e]))
    return y, picked.sum(-1).long()
'''.strip()

# Right numbers, but by calling the library's selection: earns nothing.
BORROWED = '''
from moe_lab.expert_choice import select_tokens

def pick_tokens(probs, capacity):
    return select_tokens(probs, capacity)
'''.strip()


def answer(gid: str) -> str:
    cell = next(c for c in nbformat.read(str(SOLUTION), as_version=4).cells if gen.grade_id(c) == gid)
    return "\n".join(line for line in cell.source.splitlines() if line.strip() not in (gen.BEGIN_SOLUTION, gen.END_SOLUTION))


def submission(answers: dict) -> nbformat.NotebookNode:
    nb = nbformat.read(str(EXERCISE), as_version=4)
    for cell in nb.cells:
        if gen.grade_id(cell) in answers:
            cell.source = answers[gen.grade_id(cell)]
    return nb


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("ex8")
    pick = answer("ex8_pick_tokens_solution")
    subs = {
        "solved": nbformat.read(str(SOLUTION), as_version=4),
        "untouched": nbformat.read(str(EXERCISE), as_version=4),
        "renormalised": submission({"ex8_pick_tokens_solution": pick, "ex8_layer_solution": RENORMALISED}),
        "borrowed": submission({"ex8_pick_tokens_solution": BORROWED,
                                "ex8_layer_solution": answer("ex8_layer_solution")}),
    }
    for who, nb in subs.items():
        (root / who).mkdir()
        nbformat.write(nb, str(root / who / NAME))
    out = root / "scores.csv"
    with contextlib.redirect_stdout(io.StringIO()):
        code = grading.main(["grade", str(root), "--out", str(out), "--solutions", str(REPO / "solutions"),
                             "--jobs", "2", "--cell-timeout", "60", "--timeout", "180"])
    assert code == 0
    with open(out, newline="", encoding="utf-8") as f:
        return {Path(r["notebook"]).relative_to(root).parts[0]: r for r in csv.DictReader(f)}


def test_solution_scores_full_marks(rows):
    r = rows["solved"]
    assert float(r["score"]) == float(r["max_score"]) == 6, r


def test_untouched_stub_scores_zero(rows):
    r = rows["untouched"]
    assert float(r["score"]) == 0 and float(r["max_score"]) == 6, r


def test_renormalised_gates_lose_the_layer_points_only(rows):
    r = rows["renormalised"]
    assert (float(r["ex8_pick_tokens"]), float(r["ex8_ties"]), float(r["ex8_layer"])) == (2, 1, 0), r


def test_calling_the_library_selection_earns_nothing_for_what_uses_it(rows):
    r = rows["borrowed"]
    assert float(r["ex8_pick_tokens"]) == 0 and float(r["ex8_ties"]) == 0, r
    # the layer answer is the student's own, but it runs their pick_tokens, which reaches the library:
    # at grading time that call trips, so the layer earns nothing either
    assert float(r["ex8_layer"]) == 0, r

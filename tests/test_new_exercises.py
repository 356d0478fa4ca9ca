"""Exercises 10-14 are graded by what the answers do: each solution earns every point, each untouched
stub none, and an answer built on a real misconception less than full. One `grade` call grades all of
them (two at a time); exercises 11-13 start a 4-rank Cluster in the graded kernel. Exercise 14's
written answer is never scored by code: "needs manual grading" when written, "not answered" (0) when
its cell holds only the stub or nothing."""
from __future__ import annotations

import contextlib
import csv
import io
import re
from pathlib import Path

import nbformat
import pytest

from moe_lab import grading
from moe_lab.grading import generate as gen

REPO = Path(__file__).resolve().parents[1]
# one `grade` run (20 notebooks, 5 of them with a 4-rank cluster) happens in the first test that asks for it
pytestmark = pytest.mark.timeout(1500)
NEW = {  # exercise -> its maximum score
    "ex10_predict_the_numbers.ipynb": 7,
    "ex11_bias_balancing.ipynb": 6,
    "ex12_find_the_bug.ipynb": 5,
    "ex13_predict_the_alltoall.ipynb": 5,
    "ex14_place_the_experts.ipynb": 6,
}
WRITTEN = {"ex14_place_the_experts.ipynb": 4}  # points graded by hand, in the maximum above
EX6 = "ex6_distributed_dispatch.ipynb"  # reworked: the student writes the send layout (its misconception below)

# ex10: a GPU's bytes "on the wire" counted as its whole payload, forgetting that the copies bound for
# its own expert never leave it.
WHOLE_PAYLOAD = '''
def dispatch_bytes(tokens_per_gpu, d_model, k, P, gpus_per_node, bytes_per_elem):
    total = tokens_per_gpu * k * d_model * bytes_per_elem
    return total, total * max(P - gpus_per_node, 0) / P
'''.strip()

# ex10: the crossover with the dispatch only (the combine AlltoAll forgotten).
DISPATCH_ONLY = '''
def crossover_gpus(tokens_per_gpu, d_model, d_hidden, k, hw, candidates):
    compute = tokens_per_gpu * k * 4 * d_model * d_hidden / hw["flops"]
    payload = tokens_per_gpu * k * d_model * 2
    for P in candidates:
        intra = payload * (min(P, hw["gpus_per_node"]) - 1) / P
        inter = payload * max(P - hw["gpus_per_node"], 0) / P
        if max(intra / hw["intra_bw"], inter / hw["inter_bw"]) + (P - 1) * hw["latency"] > compute:
            return P
    return None
'''.strip()

# ex11: each rank balances on its own tokens' load (no all-reduce): the ranks' biases drift apart.
LOCAL_LOAD = '''
%%writefile student_load.py
import torch


def global_load(ctx, chosen, num_experts):
    return torch.bincount(chosen.reshape(-1), minlength=num_experts).float()
'''.strip()

# ex11: a step proportional to the imbalance instead of its sign.
PROPORTIONAL = '''
%%writefile student_bias.py
import torch


def update_bias(bias, load, gamma):
    return bias + gamma * (load.mean() - load)
'''.strip()

# ex12: "fixed" by sorting on the slot alone: slots restart at 0 for every expert.
SLOT_ONLY = '''
%%writefile student_fix.py
import torch


def combine_rows(back, used, slot, num_experts):
    N, k = used.shape
    flat, flat_slot = used.reshape(-1), slot.reshape(-1)
    kept = torch.nonzero(flat >= 0).squeeze(1)
    by_row = kept[torch.argsort(flat_slot[kept], stable=True)]
    rows = back.new_zeros(N * k, back.shape[1])
    rows[by_row] = back
    return rows.view(N, k, -1)
'''.strip()

# ex12: calling the library's layout: earns nothing.
BORROWED = '''
%%writefile student_fix.py
import torch

from moe_lab.dispatch import send_order


def combine_rows(back, used, slot, num_experts):
    order, _ = send_order(used, slot, num_experts)
    rows = back.new_zeros(used.numel(), back.shape[1])
    rows[order] = back
    return rows.view(*used.shape, -1)
'''.strip()


# ex13: experts placed round-robin (expert e on rank e % P) instead of in consecutive blocks.
ROUND_ROBIN = '''
def send_counts(used, world_size, num_experts):
    P, N = world_size, used.shape[0] // world_size
    out = torch.zeros(P, P, dtype=torch.long)
    for row in range(used.shape[0]):
        for e in used[row].tolist():
            if e >= 0:
                out[row // N, e % P] += 1
    return out
'''.strip()


# ex14: the token's own node counted among the other nodes it can reach (M copies with M = n).
HOME_NODE_COUNTED = '''
def node_traffic(k, num_experts, nodes, max_nodes):
    return min(k, max_nodes * (num_experts // nodes)), min(max_nodes, k)
'''.strip()

# ex6: the send buffer sorted by expert, then by token instead of by slot: every row reaches the right
# rank and the right expert (so the round trip still matches), but not in the layout the receiver reads.
TOKEN_ORDER = '''
%%writefile student_layout.py
import torch


def send_layout(expert, slot, num_experts, world_size):
    flat = expert.reshape(-1)
    kept = torch.nonzero(flat >= 0).squeeze(1)
    order = kept[torch.argsort(flat[kept], stable=True)]
    per_expert = torch.bincount(flat[kept], minlength=num_experts)
    return order, per_expert.view(world_size, -1).sum(1)
'''.strip()

A_WRITTEN_ANSWER = "Two experts per GPU, 16 per node; each node one routing group, so M = 2 caps the copies."


def answer(name: str, gid: str) -> str:
    """The source's answer for one cell, markers removed: what a student who solved it would submit."""
    cell = next(c for c in gen.read_notebook(REPO / "solutions" / name).cells if gen.grade_id(c) == gid)
    return "\n".join(line for line in cell.source.splitlines() if line.strip() not in (gen.BEGIN_SOLUTION, gen.END_SOLUTION))


def submission(name: str, answers: dict) -> nbformat.NotebookNode:
    """The student copy with some answer cells filled in, the solution's answers in the others."""
    nb = gen.read_notebook(REPO / "exercises" / name)
    for cell in nb.cells:
        gid = gen.grade_id(cell)
        if gen.is_solution_cell(cell):
            cell.source = answers.get(gid) or answer(name, gid)
    return nb


def subs() -> dict:
    ex10, ex11, ex12, ex13, ex14 = NEW
    return {
        ("solved", ex14): gen.read_notebook(REPO / "solutions" / ex14),
        ("untouched", ex14): gen.read_notebook(REPO / "exercises" / ex14),
        ("home_node", ex14): submission(ex14, {"ex14_traffic_solution": HOME_NODE_COUNTED,
                                               "ex14_design": A_WRITTEN_ANSWER}),
        ("emptied", ex14): submission(ex14, {"ex14_design": "\n"}),  # the stub deleted, nothing written
        ("token_order", EX6): submission(EX6, {"ex6_layout_solution": TOKEN_ORDER}),
        ("solved", ex13): gen.read_notebook(REPO / "solutions" / ex13),
        ("untouched", ex13): gen.read_notebook(REPO / "exercises" / ex13),
        ("round_robin", ex13): submission(ex13, {"ex13_send_counts_solution": ROUND_ROBIN}),
        ("solved", ex10): gen.read_notebook(REPO / "solutions" / ex10),
        ("solved", ex11): gen.read_notebook(REPO / "solutions" / ex11),
        ("solved", ex12): gen.read_notebook(REPO / "solutions" / ex12),
        ("untouched", ex10): gen.read_notebook(REPO / "exercises" / ex10),
        ("untouched", ex11): gen.read_notebook(REPO / "exercises" / ex11),
        ("untouched", ex12): gen.read_notebook(REPO / "exercises" / ex12),
        ("whole_payload", ex10): submission(ex10, {"ex10_bytes_solution": WHOLE_PAYLOAD}),
        ("dispatch_only", ex10): submission(ex10, {"ex10_crossover_solution": DISPATCH_ONLY}),
        ("local_load", ex11): submission(ex11, {"ex11_load_solution": LOCAL_LOAD}),
        ("proportional", ex11): submission(ex11, {"ex11_update_solution": PROPORTIONAL}),
        ("slot_only", ex12): submission(ex12, {"ex12_fix_solution": SLOT_ONLY}),
        ("borrowed", ex12): submission(ex12, {"ex12_fix_solution": BORROWED}),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("new_exercises")
    for (who, name), nb in subs().items():
        (root / who).mkdir(exist_ok=True)
        nbformat.write(nb, str(root / who / name))
    out = root / "scores.csv"
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        code = grading.main(["grade", str(root), "--out", str(out), "--solutions", str(REPO / "solutions"),
                             "--jobs", "2", "--cell-timeout", "90", "--timeout", "240"])
    assert code == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = {(Path(r["notebook"]).relative_to(root).parts[0], Path(r["notebook"]).name): r for r in csv.DictReader(f)}
    return rows, table.getvalue()


@pytest.fixture(scope="module")
def rows(graded):
    return graded[0]


def block(table: str, who: str, name: str) -> str:
    """The score table's lines for one notebook."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace("\\", "/").endswith(f"{who}/{name}"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return "\n".join(lines[start:end])


@pytest.mark.parametrize("name", NEW)
def test_solution_scores_full_marks(rows, name):
    """Every point the checks can give; a written part is left to a person (by_hand), not scored."""
    r = rows["solved", name]
    assert float(r["max_score"]) == NEW[name] and float(r["by_hand"]) == WRITTEN.get(name, 0), r
    assert float(r["score"]) == NEW[name] - WRITTEN.get(name, 0), r


@pytest.mark.parametrize("name", NEW)
def test_untouched_stub_scores_zero(rows, name):
    r = rows["untouched", name]
    assert float(r["score"]) == 0 and float(r["max_score"]) == NEW[name] and float(r["by_hand"]) == 0, r


def test_ex14_the_written_answer_needs_manual_grading_and_the_auto_part_is_scored(graded):
    rows, table = graded
    r = rows["solved", "ex14_place_the_experts.ipynb"]
    assert (r["ex14_traffic"], r["ex14_design"], r["by_hand"]) == ("2", "", "4"), r  # neither 0 nor 4 yet
    text = block(table, "solved", "ex14_place_the_experts.ipynb")
    assert re.search(r"ex14_design\s+- / 4\s+needs manual grading", text), text
    assert re.search(r"total\s+2 / 6\s+\+ 4 points graded by hand", text), text
    assert re.search(r"graded: [\d.]+ / [\d.]+ points \+ 8 points of written answers to grade by hand", table)


def test_ex14_an_untouched_or_emptied_answer_cell_is_not_answered_and_scores_zero(graded):
    rows, table = graded
    for who in ("untouched", "emptied"):
        r = rows[who, "ex14_place_the_experts.ipynb"]
        assert (r["ex14_design"], r["by_hand"]) == ("0", "0"), (who, r)
        assert re.search(r"ex14_design\s+0 / 4\s+not answered", block(table, who, "ex14_place_the_experts.ipynb"))
    assert rows["emptied", "ex14_place_the_experts.ipynb"]["ex14_traffic"] == "2"  # the code part was solved


def test_ex14_counting_the_tokens_own_node_as_another_loses_the_traffic_points(rows):
    r = rows["home_node", "ex14_place_the_experts.ipynb"]
    assert (r["ex14_traffic"], r["ex14_design"], r["by_hand"], r["score"]) == ("0", "", "4", "0"), r


def test_ex10_counting_the_gpus_own_share_as_sent_loses_the_bytes_points_only(rows):
    r = rows["whole_payload", "ex10_predict_the_numbers.ipynb"]
    assert (float(r["ex10_load_drops"]), float(r["ex10_bytes"]), float(r["ex10_crossover"])) == (3, 0, 2), r


def test_ex10_forgetting_the_combine_alltoall_misses_the_crossover(rows):
    r = rows["dispatch_only", "ex10_predict_the_numbers.ipynb"]
    assert (float(r["ex10_load_drops"]), float(r["ex10_bytes"]), float(r["ex10_crossover"])) == (3, 2, 0), r


def test_ex11_balancing_on_each_ranks_own_load_fails_on_the_ranks(rows):
    r = rows["local_load", "ex11_bias_balancing.ipynb"]
    assert (float(r["ex11_update"]), float(r["ex11_load"]), float(r["ex11_balance"])) == (2, 0, 0), r


def test_ex11_a_step_proportional_to_the_imbalance_is_not_the_rule(rows):
    r = rows["proportional", "ex11_bias_balancing.ipynb"]
    assert float(r["ex11_update"]) == 0 and float(r["ex11_load"]) == 2, r
    assert float(r["score"]) < NEW["ex11_bias_balancing.ipynb"], r


def test_ex12_sorting_by_slot_alone_is_still_wrong_on_the_ranks(rows):
    r = rows["slot_only", "ex12_find_the_bug.ipynb"]
    assert (float(r["ex12_by_hand"]), float(r["ex12_ranks_output"])) == (0, 0), r


def test_ex12_calling_the_library_layout_earns_nothing(rows):
    r = rows["borrowed", "ex12_find_the_bug.ipynb"]
    assert float(r["score"]) == 0, r


def test_ex13_round_robin_placement_predicts_the_wrong_matrix(rows):
    r = rows["round_robin", "ex13_predict_the_alltoall.ipynb"]
    assert (float(r["ex13_by_hand"]), float(r["ex13_on_ranks"])) == (0, 0), r


@pytest.mark.parametrize("name", NEW)
def test_every_new_exercise_says_the_library_answer_earns_nothing(name):
    intro = gen.read_notebook(REPO / "exercises" / name).cells[0].source
    assert "earns nothing" in intro and "How this notebook is graded" in intro


def test_ex6_a_send_buffer_in_token_order_inside_each_expert_fails_the_layout_but_not_the_round_trip(rows):
    """The misconception survives the round trip (rows come back the way they left), so only the layout
    checks, on the ranks against the reference's receive buffers, can catch it."""
    r = rows["token_order", EX6]
    assert (r["ex6_layout"], r["ex6_dispatch"], r["ex6_combine"], r["ex6_round_trip"]) == ("0", "0", "0", "1"), r

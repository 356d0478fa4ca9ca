"""The figures show the trace's own numbers: every bar, cell and line is checked against StepTrace.

Hand-written traces (tests/trace_factory.py) give pencil-and-paper numbers; factory traces give
real routing (ragged and padded, balanced and skew = 1) at sizes where hand checks are impossible.
"""
import ast
from pathlib import Path

import numpy as np
import pytest

from moe_lab import MoEConfig, viz
from moe_lab.viz.path import _circle
from trace_factory import chapter_question_trace, make_trace, tiny_trace, two_choice_trace

SEND, RECV, DROP = 0, 1, 2  # heatmap rows of an alltoall_buffers panel


def _factory(dispatch, skew, **cfg):
    return make_trace(MoEConfig(num_experts=8, k=2, capacity_factor=1.0, dispatch=dispatch, **cfg), 4, 64, skew)


TRACES = {
    "tiny-ragged": lambda: tiny_trace("ragged"),
    "tiny-padded": lambda: tiny_trace("padded"),
    "two-choice": two_choice_trace,
    "ragged-balanced": lambda: _factory("ragged", 0.0),
    "ragged-skew1": lambda: _factory("ragged", 1.0),
    "padded-balanced": lambda: _factory("padded", 0.0),
    "padded-skew1": lambda: _factory("padded", 1.0),
    "padded-dropless": lambda: make_trace(MoEConfig(num_experts=4, k=1, capacity_factor=None,
                                                    dispatch="padded"), 2, 32, 1.0),
    "overflow-skew1": lambda: _factory("ragged", 1.0, policy="overflow"),
}


@pytest.fixture(params=sorted(TRACES))
def trace(request):
    return TRACES[request.param]()


def _flat(title: str) -> str:
    """A wrapped title as one line of plain text."""
    import re

    return re.sub(r"<[^>]+>", "", title.replace("<br>", " "))


def _by_name(fig, prefix):
    hits = [t for t in fig.data if (t.name or "").startswith(prefix)]
    assert len(hits) == 1, f"expected one trace named {prefix!r}, got {[t.name for t in fig.data]}"
    return hits[0]


# ---- traffic, load, drops --------------------------------------------------------------------

def test_traffic_heatmap_is_the_send_counts_matrix(trace):
    fig = viz.traffic_matrix(trace)
    assert len(fig.data) == 1
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), trace.send_counts)


def test_traffic_of_the_worked_example():
    fig = viz.traffic_matrix(tiny_trace())
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), [[2, 3], [1, 3]])
    assert "9 copies" in fig.layout.title.text and "transpose" in fig.layout.title.text


def test_load_bars_are_the_tokens_each_gpu_receives(trace):
    fig = viz.per_gpu_load(trace)
    np.testing.assert_array_equal(_by_name(fig, "received").y, trace.recv_tokens)
    m = trace.experts_per_rank
    np.testing.assert_array_equal(_by_name(fig, "dropped").y, trace.dropped.reshape(-1, m).sum(1))
    caps = [t for t in fig.data if (t.name or "").startswith("capacity")]
    if trace.capacity is None:
        assert caps == []
    else:
        assert list(caps[0].y) == [trace.capacity * m * trace.world_size] * 2
    assert f"max/mean = {trace.load_imbalance:.2f}" in fig.layout.title.text


def test_load_of_the_worked_example_shows_the_overloaded_gpu():
    fig = viz.per_gpu_load(tiny_trace())
    assert list(_by_name(fig, "received").y) == [3, 6]
    assert list(_by_name(fig, "dropped").y) == [0, 1]
    assert list(_by_name(fig, "capacity").y) == [6, 6]  # C·m·P = 3·1·2


def test_dropped_bars_are_the_traces_kept_and_dropped(trace):
    fig = viz.dropped_tokens(trace)
    np.testing.assert_array_equal(_by_name(fig, "kept").y, trace.kept)
    np.testing.assert_array_equal(_by_name(fig, "dropped").y, trace.dropped)
    assert f"{100 * trace.dropped_share:.1f}%" in fig.layout.title.text


def test_dropped_share_of_the_worked_example_is_one_in_ten():
    fig = viz.dropped_tokens(tiny_trace())
    assert list(_by_name(fig, "dropped").y) == [0, 1]
    assert "10.0% of the P·N·k = 10 assignments" in fig.layout.title.text


def test_skew_moves_the_drops_onto_the_hot_expert():
    fig = viz.dropped_tokens(_factory("ragged", 1.0))
    dropped = np.asarray(_by_name(fig, "dropped").y)
    assert dropped[0] > 0 and dropped[0] == dropped.max()  # everyone wants E0


# ---- AlltoAll buffers --------------------------------------------------------------------------

def _cells(fig, row, value=None):
    """Per panel: cells of a buffer row that hold something (or exactly `value`)."""
    out = []
    for hm in fig.data:
        z = np.asarray(hm.z, float)[row]
        filled = ~np.isnan(z) & (z != viz.step.EMPTY)  # EMPTY: past the end of that buffer
        out.append(int(np.sum(filled)) if value is None else int(np.sum(z == value)))
    return out


def test_alltoall_buffers_has_one_panel_per_gpu(trace):
    fig = viz.alltoall_buffers(trace)
    P = trace.world_size
    assert len(fig.data) == P and all(t.type == "heatmap" for t in fig.data)
    assert len({t.xaxis for t in fig.data}) == P  # each in its own subplot
    titles = [a.text for a in fig.layout.annotations]
    assert all(any(t.startswith(f"GPU {r}:") for t in titles) for r in range(P))


def test_buffer_rows_have_the_traces_lengths(trace):
    fig = viz.alltoall_buffers(trace)
    assert _cells(fig, SEND) == list(trace.send_rows)
    assert _cells(fig, RECV) == list(trace.recv_rows)
    assert _cells(fig, DROP) == [int((trace.used[r] < 0).sum()) for r in range(trace.world_size)]
    assert sum(_cells(fig, DROP)) == trace.dropped.sum()


def test_padding_cells_are_the_wasted_rows(trace):
    fig = viz.alltoall_buffers(trace)
    pad_send, pad_recv = sum(_cells(fig, SEND, -1)), sum(_cells(fig, RECV, -1))
    if trace.buffer_slots is None:
        assert pad_send == pad_recv == 0
    else:
        assert pad_send == trace.send_rows.sum() - trace.kept.sum()
        assert pad_recv == trace.recv_rows.sum() - trace.kept.sum()


def test_padding_of_the_worked_example():
    fig = viz.alltoall_buffers(tiny_trace("padded"))
    assert _cells(fig, SEND, -1) == [1, 2]  # rank 0 has 2 of 3 e0 slots filled, rank 1 has 1
    assert _cells(fig, RECV, -1) == [3, 0]  # GPU 0 receives 3 real rows of 6; GPU 1 is full
    assert "padding" in fig.layout.coloraxis.colorbar.ticktext


def test_buffer_cells_are_coloured_by_expert_in_buffer_order(trace):
    fig = viz.alltoall_buffers(trace)
    for r, hm in enumerate(fig.data):
        z = np.asarray(hm.z, float)
        send = [e if t is not None else -1 for _, e, _, t, _ in trace.send_buffer(r)]
        recv = [e if t is not None else -1 for _, e, _, t, _ in trace.recv_buffer(r)]
        np.testing.assert_array_equal(z[SEND, : len(send)], send)
        np.testing.assert_array_equal(z[RECV, : len(recv)], recv)
        m = trace.experts_per_rank  # after dispatch a GPU holds only its own experts' tokens
        assert set(recv) <= set(range(r * m, (r + 1) * m)) | {-1}


@pytest.mark.parametrize("dispatch", ["padded", "ragged"])
def test_buffers_stay_at_one_trace_per_gpu_at_full_size(dispatch):
    trace = make_trace(MoEConfig(num_experts=8, k=2, dispatch=dispatch), 8, 512, 1.0)
    fig = viz.alltoall_buffers(trace)
    assert len(fig.data) == 8 and fig.data[0].text is None  # too many cells for per-cell hover text
    assert sum(_cells(fig, SEND, -1)) == trace.send_rows.sum() - trace.kept.sum()
    test_buffer_cells_are_coloured_by_expert_in_buffer_order(trace)  # the same cells, cell by cell
    for r in (0, 7):  # one white line wherever the destination (send) or source (receive) GPU changes
        lines = fig.layout.shapes[r].path.count("M")
        owners = [[d for d, *_ in trace.send_buffer(r)], [s for s, *_ in trace.recv_buffer(r)]]
        assert lines == sum(sum(a != b for a, b in zip(o, o[1:])) for o in owners)


# ---- the token's path ----------------------------------------------------------------------------

def test_token_reaches_gpus_3_and_7_and_returns():
    trace = chapter_question_trace()
    fig = viz.token_path(trace, 0, 0)
    title = fig.layout.title.text
    assert "GPU 3 (E3) and GPU 7 (E7)" in title and "back to GPU 0" in title
    pos = _circle(8)
    for dst in (3, 7):
        go_there = _by_name(fig, f"dispatch: choice {0 if dst == 3 else 1} → E{dst}")
        end = np.array([go_there.x[-1], go_there.y[-1]])
        assert np.argmin(np.linalg.norm(pos - end, axis=1)) == dst  # the arrow ends at the expert's GPU
    for combine in (t for t in fig.data if (t.name or "").startswith("combine")):
        end = np.array([combine.x[-1], combine.y[-1]])
        assert np.argmin(np.linalg.norm(pos - end, axis=1)) == 0  # and comes home
    text = viz.describe_token_path(trace, 0, 0)
    assert "dispatch to GPU 3" in text and "dispatch to GPU 7" in text
    assert "y = 0.750·E3(x) + 0.250·E7(x)" in text


def test_the_title_pairs_each_gpu_with_its_own_experts():
    """GPU 2's token 0 chose E5 first, then E1: GPUs in order, each beside the expert it holds."""
    title = viz.token_path(chapter_question_trace(), 2, 0).layout.title.text
    assert "GPU 1 (E1) and GPU 5 (E5)" in title


def test_token_path_names_every_expert_gpu(trace):
    for rank in range(trace.world_size):
        path = trace.hops(rank, 0)
        title = viz.token_path(trace, rank, 0).layout.title.text
        for hop in path:
            if not hop["dropped"]:
                assert f"GPU {hop['expert_rank']}" in title and f"E{hop['expert']}" in title


def test_a_dropped_copy_is_marked_and_contributes_nothing():
    trace = tiny_trace()  # rank 1's token 4 was over capacity
    fig = viz.token_path(trace, 1, 4)
    assert _by_name(fig, "choice 0: E1 dropped").marker.symbol == "x"
    assert "all 1 copies dropped" in fig.layout.title.text
    assert "y = 0 " in viz.describe_token_path(trace, 1, 4)


def test_a_local_copy_stays_on_its_gpu():
    fig = viz.token_path(two_choice_trace(), 0, 0)  # E1 lives on GPU 0, the token's home
    assert not any((t.name or "").startswith("combine: E1") for t in fig.data)  # no network trip back
    assert "stays on GPU 0" in viz.describe_token_path(two_choice_trace(), 0, 0)


def test_token_path_rejects_a_token_that_does_not_exist():
    with pytest.raises(ValueError, match="no token 9 on rank 0"):
        viz.token_path(tiny_trace(), 0, 9)


# ---- which assignments dropped (priority) ---------------------------------------------------------

def test_priority_figure_counts_every_assignment_in_both_panels(trace):
    fig = viz.dropped_assignments(trace)
    n_drop = int((trace.used < 0).sum())
    for panel in ("by token position", "by gate g"):
        assert sum(_by_name(fig, f"dropped ({panel})").y) == n_drop == trace.dropped.sum()
        assert sum(_by_name(fig, f"kept ({panel})").y) == trace.assignments - n_drop
    if n_drop:
        assert f"{100 * viz.dropped_gate_share(trace):.1f}% of the gate mass" in _flat(fig.layout.title.text)
    else:
        assert "dropped: none" in _flat(fig.layout.title.text)


def test_position_priority_drops_the_last_tokens_and_score_the_least_sure():
    cfg = MoEConfig(num_experts=8, k=2, capacity_factor=0.5, priority="position")
    by_position = make_trace(cfg, 4, 256, 0.5)
    by_score = make_trace(cfg.replace(priority="score"), 4, 256, 0.5)
    assert by_position.dropped.sum() == by_score.dropped.sum()
    dropped_at = np.nonzero(by_position.used < 0)[1]  # token positions of the dropped assignments
    kept_at = np.nonzero(by_position.used >= 0)[1]
    assert dropped_at.mean() > kept_at.mean() + 30  # late tokens find the buffers full
    assert viz.dropped_gate_share(by_score) < viz.dropped_gate_share(by_position)
    late = _by_name(viz.dropped_assignments(by_position), "dropped (by token position)").y
    assert late[-1] > late[0]
    assert "priority = score" in _flat(viz.dropped_assignments(by_score).layout.title.text)


def test_dropped_gate_share_of_the_worked_example():
    trace = tiny_trace()  # rank 1's token 4 dropped; k = 1, so every gate is 1: 1 of 10
    assert viz.dropped_gate_share(trace) == pytest.approx(0.1)


# ---- bytes of either layout ------------------------------------------------------------------------

@pytest.mark.parametrize("skew", [0.0, 1.0])
@pytest.mark.parametrize("cf", [1.0, None])
def test_dispatch_bytes_of_either_layout_are_what_that_layout_sends(skew, cf):
    cfg = MoEConfig(num_experts=8, k=2, capacity_factor=cf)
    ragged = make_trace(cfg, 4, 64, skew)
    padded = make_trace(cfg.replace(dispatch="padded"), 4, 64, skew)
    for trace in (ragged, padded):
        b = viz.dispatch_bytes(trace)
        assert b["ragged"] == int(ragged.bytes_sent.sum()) and b["padded"] == int(padded.bytes_sent.sum())
    assert viz.dispatch_bytes(padded)["shown"] == "padded" and viz.dispatch_bytes(ragged)["shown"] == "ragged"


# ---- figures fit the screen ------------------------------------------------------------------------

def _all_figures(trace):
    return [viz.alltoall_buffers(trace), viz.traffic_matrix(trace), viz.per_gpu_load(trace),
            viz.dropped_tokens(trace), viz.dropped_assignments(trace), viz.stragglers(trace),
            viz.token_path(trace, 0, 0)]


def test_no_figure_has_a_fixed_width_and_titles_are_wrapped(trace):
    import re

    for fig in _all_figures(trace):
        assert fig.layout.width is None, fig.layout.title.text
        for line in fig.layout.title.text.split("<br>"):
            plain = re.sub(r"<[^>]+>", "", line)
            limit = 100 if line.startswith("<sup>") else 70
            assert len(plain) <= limit, (len(plain), plain)


def test_wrap_title_keeps_every_word_and_tags_each_subtitle_line():
    from moe_lab.viz.style import wrap_title

    text = wrap_title("a " * 40, "b " * 80, width=20)
    lines = text.split("<br>")
    assert all(len(line) <= 20 for line in lines if not line.startswith("<sup>"))
    assert [line for line in lines if line.startswith("<sup>")] == [
        line for line in lines if line.startswith("<sup>") and line.endswith("</sup>")]
    assert _flat(text).split() == ["a"] * 40 + ["b"] * 80


# ---- stragglers ----------------------------------------------------------------------------------

def test_step_line_is_the_slowest_gpu(trace):
    fig = viz.stragglers(trace)
    line = _by_name(fig, "step time")
    assert line.y[0] == pytest.approx(1e3 * trace.rank_time_s.max())
    bars = [t for t in fig.data if t.type == "bar"]
    np.testing.assert_allclose(np.sum([b.y for b in bars], axis=0), 1e3 * trace.rank_time_s)


def test_stragglers_of_the_worked_example():
    fig = viz.stragglers(tiny_trace())
    assert _by_name(fig, "experts").y[1] == pytest.approx(3.5)
    assert "GPU 1 takes 9.00 ms (mean 7.00 ms)" in fig.layout.title.text


# ---- training curves -------------------------------------------------------------------------------

def _history(n=6, E=4):
    out = []
    for s in range(n):
        share = np.full(E, 1.0 / E) * (1 - s / n)
        share[0] += s / n  # collapsing onto E0
        out.append(dict(step=s, load_share=share.tolist(), dropped_share=0.1 * s, aux_loss=0.01 * (1 + s),
                        task_loss=None if s == 2 else 1.0 / (s + 1)))
    return out


def test_training_curves_plot_the_records():
    hist = _history()
    fig = viz.training_curves(hist)
    for e in range(4):
        np.testing.assert_allclose(_by_name(fig, f"E{e}").y, [h["load_share"][e] for h in hist])
    mom = _by_name(fig, "max over mean").y  # computed from load_share when a record has none
    np.testing.assert_allclose(mom, [4 * max(h["load_share"]) for h in hist])
    assert _by_name(fig, "task loss").y[2] is None  # a missing value is a gap, not a zero
    np.testing.assert_allclose(_by_name(fig, "aux loss").y, [h["aux_loss"] for h in hist])


def test_record_from_trace_follows_the_schema():
    trace = _factory("ragged", 1.0)
    rec = viz.record_from_trace(3, trace, task_loss=0.5)
    assert set(rec) == set(viz.HISTORY_FIELDS)
    assert sum(rec["load_share"]) == pytest.approx(1.0)
    assert rec["max_over_mean"] == pytest.approx(8 * trace.chosen_count.max() / trace.chosen_count.sum())
    assert rec["dropped_share"] == trace.dropped_share


def test_compare_runs_overlays_one_line_per_run():
    runs = {"α = 0": _history(), "α = 0.01": _history(4)}
    fig = viz.compare_runs(runs)
    for name in runs:
        lines = [t for t in fig.data if t.name == name]
        assert len(lines) == 2  # max/mean and task loss
        assert len(lines[0].x) == len(runs[name])


def test_figures_need_no_torch():
    """Figures read numpy arrays only: a trace can be drawn where torch is not installed."""
    root = Path(viz.__file__).parent
    files = sorted(root.glob("*.py")) + [root.parent / "trace.py"]
    assert len(files) >= 6
    for path in files:
        name = path.name
        tree = ast.parse(path.read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "torch"], (name, imported)


def _strict_json(fig) -> str:
    import json

    from plotly.serializers import _py_to_js

    return json.dumps([_py_to_js(t.to_plotly_json(), None) for t in fig.data], allow_nan=False, default=lambda o: None)


def test_figures_travel_to_a_widget_as_strict_json(trace):
    """FigureWidget messages are JSON; a NaN would be rejected by the browser (None is a gap)."""
    figs = _all_figures(trace) + [viz.training_curves(_history()), viz.training_curves([], num_experts=4)]
    for fig in figs:
        assert fig.data, f"{fig.layout.title.text!r} has no traces"
        assert _strict_json(fig).startswith("[{")


def test_the_strict_json_check_rejects_a_nan():
    import plotly.graph_objects as go

    with pytest.raises(ValueError):
        _strict_json(go.Figure(go.Bar(x=[0, 1], y=[1.0, float("nan")])))


# ---- figures built without plotly's validation -----------------------------------------------------
UNVALIDATED = ["alltoall_buffers", "traffic_matrix", "per_gpu_load", "dropped_tokens", "dropped_assignments"]


@pytest.mark.parametrize("name", UNVALIDATED)
def test_unvalidated_figures_equal_their_validated_twin(name, trace):
    """The figures a slider redraws skip plotly's validation (viz.style.figure): each must be, key
    for key, what plotly builds from the same dicts *with* validation (which also raises on any
    property plotly does not know)."""
    import json

    import plotly.graph_objects as go

    fig = getattr(viz, name)(trace)
    assert fig._validate is False  # the fast path is really taken
    validated = go.Figure(fig.to_dict())  # validates every property
    assert json.loads(fig.to_json()) == json.loads(validated.to_json())


def _lab_history(steps: int = 6) -> list:
    from moe_lab.train import merge_step

    rng = np.random.default_rng(0)
    return [merge_step(s, [dict(chosen=rng.integers(0, 60, 8), kept=rng.integers(0, 30, 8),
                                task_loss=float(rng.random()), aux_loss=0.1) for _ in range(8)], 8)
            for s in range(steps)]


@pytest.mark.parametrize("name", ["gpu_load", "lab_curves", "expert_drops"])
def test_the_labs_unvalidated_figures_equal_their_validated_twin(name):
    """The BalancingLab redraws these every few training steps without validation (see above)."""
    import json

    import plotly.graph_objects as go

    history = _lab_history()
    fig = viz.lab_curves(history, 40) if name == "lab_curves" else getattr(viz, name)(history[-1])
    assert fig._validate is False
    assert json.loads(fig.to_json()) == json.loads(go.Figure(fig.to_dict()).to_json())

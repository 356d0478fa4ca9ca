"""Dashboards, headless: setting a control's `.value` runs one step and the figures show its numbers.

A fake stepper routes with the real routing code in this process (tests/trace_factory.py), so these
tests need no worker ranks; one test at the end drives a real 2-rank Cluster.
"""
import re

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
import pytest

from moe_lab import MoEConfig, viz
from moe_lab.widgets import Playground, TokenTracer, TrainingMonitor, copy_figure
from moe_lab.widgets.common import _same
from trace_factory import chapter_question_trace, make_trace


class FakeCluster:
    """Duck-types Cluster.step / .world_size; records every call."""

    def __init__(self, world_size=4, on_step=None, fail_when=None):
        self.world_size = world_size
        self.calls = []
        self.on_step, self.fail_when = on_step, fail_when

    def step(self, cfg, tokens_per_rank=512, skew=0.0, backward=False):
        self.calls.append(dict(cfg=cfg, tokens_per_rank=tokens_per_rank, skew=skew, backward=backward))
        if self.fail_when and self.fail_when(cfg, tokens_per_rank, skew):
            raise RuntimeError("rank 1 failed: simulated")
        if self.on_step:
            self.on_step(len(self.calls))
        return make_trace(cfg, self.world_size, tokens_per_rank, skew)


@pytest.fixture
def fake():
    return FakeCluster()


@pytest.fixture
def pg(fake):
    return Playground(fake, MoEConfig(num_experts=8, k=2, capacity_factor=1.25), tokens_per_rank=64)


def _z(fw):
    return np.asarray(fw.data[0].z)


def _named(fw, prefix):
    return next(t for t in fw.data if (t.name or "").startswith(prefix))


def _buffer_cells(fw, value=None):
    """Send and receive cells over all panels: filled ones, or those equal to `value` (-1 = padding)."""
    z = np.stack([np.asarray(t.z, float)[:2] for t in fw.data])  # [P, 2, width]
    return int(np.sum(~np.isnan(z))) if value is None else int(np.sum(z == value))


def assert_figures_show(pg, trace):
    np.testing.assert_array_equal(_z(pg.figures["traffic"]), trace.send_counts)
    np.testing.assert_array_equal(_named(pg.figures["load"], "received").y, trace.recv_tokens)
    np.testing.assert_array_equal(_named(pg.figures["dropped"], "kept").y, trace.kept)
    np.testing.assert_array_equal(_named(pg.figures["dropped"], "dropped").y, trace.dropped)
    assert len(pg.figures["buffers"].data) == trace.world_size


def test_default_state_is_drawn_before_any_slider_moves(pg, fake):
    assert len(fake.calls) == 1 and fake.calls[0]["backward"] is False
    assert set(pg.figures) == {"buffers", "traffic", "load", "dropped", "priority"}
    assert all(isinstance(f, go.FigureWidget) for f in pg.figures.values())
    assert_figures_show(pg, pg.trace)
    assert "application/vnd.jupyter.widget-view+json" in pg._repr_mimebundle_()


def test_moving_k_runs_one_step_and_redraws_in_place(pg, fake):
    before = pg.trace.send_counts.copy()
    fw = pg.figures["traffic"]
    heatmap = fw.data[0]
    pg.sliders["k"].value = 1
    assert len(fake.calls) == 2 and fake.calls[-1]["cfg"].k == 1
    assert pg.trace.send_counts.sum() < before.sum()  # half the copies: one expert per token
    assert_figures_show(pg, pg.trace)
    assert fw.data[0] is heatmap  # the same trace object, updated, not a new figure


def test_every_control_reaches_the_step(pg, fake):
    s = pg.sliders
    s["tokens_per_rank"].value = 128
    s["skew"].value = 0.5
    s["policy"].value = "overflow"
    s["priority"].value = "score"
    s["dispatch"].value = "padded"
    last = fake.calls[-1]
    assert (last["tokens_per_rank"], last["skew"]) == (128, 0.5)
    cfg = last["cfg"]
    assert (cfg.policy, cfg.priority, cfg.dispatch) == ("overflow", "score", "padded")
    assert len(fake.calls) == 6
    assert pg.trace.tokens_per_rank == 128
    assert_figures_show(pg, pg.trace)


def test_lower_capacity_under_skew_drops_more(pg):
    pg.sliders["skew"].value = 1.0
    pg.sliders["capacity_factor"].value = 2.0
    roomy = int(pg.trace.dropped.sum())
    pg.sliders["capacity_factor"].value = 0.5
    tight = int(pg.trace.dropped.sum())
    assert tight > roomy
    assert int(np.sum(_named(pg.figures["dropped"], "dropped").y)) == tight
    assert f"{100 * pg.trace.dropped_share:.1f}%" in pg.status.value


def test_dropless_drops_nothing(pg, fake):
    pg.sliders["skew"].value = 1.0
    pg.sliders["capacity_factor"].value = 0.5
    assert pg.trace.dropped.sum() > 0
    pg.sliders["dropless"].value = True
    assert fake.calls[-1]["cfg"].capacity_factor is None
    assert pg.trace.dropped.sum() == 0
    assert np.sum(_named(pg.figures["dropped"], "dropped").y) == 0
    assert not [t for t in pg.figures["load"].data if (t.name or "").startswith("capacity")]
    assert pg.sliders["capacity_factor"].disabled


def test_padded_buffers_show_more_slots_than_ragged(pg):
    pg.sliders["capacity_factor"].value = 2.0
    ragged = _buffer_cells(pg.figures["buffers"])
    assert _buffer_cells(pg.figures["buffers"], -1) == 0
    pg.sliders["dispatch"].value = "padded"
    padded = _buffer_cells(pg.figures["buffers"])
    assert padded > ragged
    assert padded == pg.trace.send_rows.sum() + pg.trace.recv_rows.sum()
    assert _buffer_cells(pg.figures["buffers"], -1) == padded - 2 * pg.trace.kept.sum()


def test_a_change_during_a_step_runs_once_with_the_latest_settings():
    holder = {}

    def drag_while_running(n):  # the user keeps dragging while step 2 runs
        if n == 2:
            holder["pg"].sliders["skew"].value = 0.25
            holder["pg"].sliders["skew"].value = 0.75

    fake = FakeCluster(on_step=drag_while_running)
    holder["pg"] = pg = Playground(fake, tokens_per_rank=64)
    pg.sliders["k"].value = 1
    assert [c["skew"] for c in fake.calls] == [0.0, 0.0, 0.75]  # 0.25 never ran
    assert pg.trace.extra["skew"] == 0.75 and pg.steps_run == 3


def test_toggling_back_during_a_step_runs_nothing_more():
    holder = {}

    def toggle(n):
        if n == 2:
            holder["pg"].sliders["policy"].value = "overflow"
            holder["pg"].sliders["policy"].value = "drop"

    fake = FakeCluster(on_step=toggle)
    holder["pg"] = pg = Playground(fake, tokens_per_rank=64)
    pg.sliders["k"].value = 1
    assert len(fake.calls) == 2


def test_a_failed_step_is_shown_and_the_last_figures_stay():
    fake = FakeCluster(fail_when=lambda cfg, n, skew: skew > 0.9)
    pg = Playground(fake, tokens_per_rank=64)
    good = pg.trace
    pg.sliders["skew"].value = 1.0
    assert "step failed" in pg.status.value and "rank 1 failed" in pg.status.value
    assert isinstance(pg.error, RuntimeError) and pg.trace is good
    assert_figures_show(pg, good)
    pg.sliders["skew"].value = 0.5  # recovers on the next good step
    assert pg.error is None and "step failed" not in pg.status.value


def test_status_shows_latency_and_key_numbers(pg):
    text = pg.status.value
    assert "ms</b> on 4 GPUs" in text
    assert f"{pg.trace.load_imbalance:.2f}" in text and f"{pg.trace.aux_loss:.4f}" in text


def test_the_default_start_has_capacity_so_skew_and_a_lower_capacity_drop_at_once(fake):
    """The chapter's "try skew 1 and lower the capacity factor" must act without finding a checkbox."""
    pg = Playground(fake, tokens_per_rank=64)
    assert not pg.sliders["dropless"].value and not pg.sliders["capacity_factor"].disabled
    assert fake.calls[0]["cfg"].capacity_factor is not None
    pg.sliders["skew"].value = 1.0
    before = int(pg.trace.dropped.sum())
    pg.sliders["capacity_factor"].value = 0.5
    assert int(pg.trace.dropped.sum()) > before


def _figures_json(pg) -> dict:
    return {name: fw.to_json() for name, fw in pg.figures.items()}


def _changed(before: dict, after: dict) -> list:
    return [name for name in before if before[name] != after[name]]


# The value each control moves to, from a state where tokens drop (skew 1, capacity factor 0.75).
MOVES = dict(k=1, capacity_factor=1.5, dropless=True, skew=0.5, tokens_per_rank=128, policy="overflow",
             priority="score", dispatch="padded")


@pytest.mark.parametrize("name", sorted(MOVES))
def test_every_control_changes_a_drawn_figure(fake, name):
    pg = Playground(fake, MoEConfig(num_experts=8, k=2, capacity_factor=0.75), tokens_per_rank=64, skew=1.0)
    assert pg.trace.dropped.sum() > 0
    before = _figures_json(pg)
    pg.sliders[name].value = MOVES[name]
    assert _changed(before, _figures_json(pg)), f"moving {name} changed no figure"


def test_every_control_is_covered():
    """A control added to the Playground must be added to MOVES (α moves to the BalancingLab)."""
    pg = Playground(FakeCluster(), tokens_per_rank=64)
    assert set(pg.sliders) == set(MOVES)


def test_priority_changes_which_assignments_drop_not_how_many(fake):
    pg = Playground(fake, MoEConfig(num_experts=8, k=2, capacity_factor=0.5), tokens_per_rank=256, skew=0.5)
    by_position = pg.trace
    fig = pg.figures["priority"]
    pos_title = fig.layout.title.text
    pg.sliders["priority"].value = "score"
    by_score = pg.trace
    assert by_score.dropped.sum() == by_position.dropped.sum()  # the same counts ...
    assert viz.dropped_gate_share(by_score) < viz.dropped_gate_share(by_position)  # ... the least sure drop
    title = re.sub(r"<[^>]+>", "", fig.layout.title.text.replace("<br>", " "))
    assert "priority = position" in pos_title.replace("<br>", " ") and "priority = score" in title
    assert f"{100 * viz.dropped_gate_share(by_score):.1f}% of the gate mass" in title
    dropped = _named(fig, "dropped (by token position)").y
    assert sum(dropped) == by_score.dropped.sum()


def test_the_layout_switch_shows_both_layouts_bytes_beside_it(pg):
    ragged = viz.dispatch_bytes(pg.trace)
    assert f"<b>ragged {ragged['ragged'] / 1e6:.2f} MB" in pg.bytes.value
    assert f"padded {ragged['padded'] / 1e6:.2f} MB" in pg.bytes.value
    pg.sliders["dispatch"].value = "padded"
    padded = viz.dispatch_bytes(pg.trace)
    assert padded["padded"] == int(pg.trace.bytes_sent.sum()) and padded["ragged"] == ragged["ragged"]
    assert f"<b>padded {padded['padded'] / 1e6:.2f} MB" in pg.bytes.value
    controls = pg.widget.children[0]
    assert any(pg.bytes in column.children for column in controls.children)  # next to the switch


def test_running_shows_while_a_step_runs_and_goes_after():
    seen = []
    holder = {}
    fake = FakeCluster(on_step=lambda n: seen.append(holder["pg"].busy.value) if "pg" in holder else None)
    holder["pg"] = pg = Playground(fake, tokens_per_rank=64)
    pg.sliders["k"].value = 1
    assert "running" in seen[-1] and pg.busy.value == ""
    failing = FakeCluster(fail_when=lambda cfg, n, skew: skew > 0.9)
    pg = Playground(failing, tokens_per_rank=64)
    pg.sliders["skew"].value = 1.0
    assert pg.error is not None and pg.busy.value == ""  # a failed step clears it too


def test_figures_fit_a_1280_px_lab_with_the_file_browser_open(pg):
    """A FigureWidget keeps the width it is given: each is at most FULL_WIDTH, and the figures of a
    row (load and priority, right under the controls) fit it side by side."""
    from moe_lab.widgets.common import FULL_WIDTH, HALF_WIDTH

    assert all(0 < fw.layout.width <= FULL_WIDTH for fw in pg.figures.values())
    rows = [c for c in pg.widget.children if isinstance(c, w.Box) and "wrap" in (c.layout.flex_flow or "")
            and all(isinstance(f, go.FigureWidget) for f in c.children)]
    assert len(rows) == 1 and sum(f.layout.width for f in rows[0].children) <= FULL_WIDTH
    assert list(rows[0].children) == [pg.figures["load"], pg.figures["priority"]]
    pg.sliders["k"].value = 1  # a redraw keeps the width
    assert pg.figures["load"].layout.width == pg.figures["priority"].layout.width == HALF_WIDTH


def test_copy_figure_replaces_traces_when_their_number_changes():
    fw = go.FigureWidget(go.Figure([go.Bar(y=[1, 2]), go.Bar(y=[3, 4])], layout=dict(title="old")))
    copy_figure(fw, go.Figure([go.Scatter(y=[5])], layout=dict(title="new")))
    assert len(fw.data) == 1 and fw.data[0].type == "scatter" and list(fw.data[0].y) == [5]
    assert fw.layout.title.text == "new"


def test_copy_figure_clears_what_the_new_figure_lacks():
    fw = go.FigureWidget(go.Figure(go.Heatmap(z=[[1, 2]], text=[["a", "b"]], hovertemplate="%{text}"),
                                   layout=dict(shapes=[dict(type="line", x0=0, x1=1, y0=0, y1=1)])))
    copy_figure(fw, go.Figure(go.Heatmap(z=[[3, 4]])))
    assert fw.data[0].text is None and fw.data[0].hovertemplate is None  # no stale hover labels
    assert list(fw.data[0].z[0]) == [3, 4] and fw.layout.shapes == ()


# ---- TokenTracer -----------------------------------------------------------------------------

def test_token_tracer_shows_the_chapter_question():
    tracer = TokenTracer(chapter_question_trace())
    title = tracer.figures["path"].layout.title.text
    assert "GPU 3 (E3) and GPU 7 (E7)" in title
    assert "dispatch to GPU 3" in tracer.description and "dispatch to GPU 7" in tracer.description
    tracer.sliders["rank"].value = 2  # GPU 2's token 0 goes to E5 and E1, in that order of choice
    assert "GPU 1 (E1) and GPU 5 (E5)" in tracer.figures["path"].layout.title.text
    assert "Token 0 on GPU 2" in tracer.text.value


def test_token_tracer_follows_the_playground(pg):
    tracer = TokenTracer(pg, rank=1, token=5)
    pg.sliders["skew"].value = 1.0
    path = pg.trace.hops(1, 5)
    title = tracer.figures["path"].layout.title.text
    for hop in path:
        if not hop["dropped"]:
            assert f"GPU {hop['expert_rank']}" in title
    assert tracer.description == viz.describe_token_path(pg.trace, 1, 5)
    pg.sliders["tokens_per_rank"].value = 128
    assert tracer.sliders["token"].max == 127


# ---- TrainingMonitor --------------------------------------------------------------------------

def _records(steps):
    for s in range(steps + 5):  # yields more than asked: the monitor must stop at `steps`
        trace = make_trace(MoEConfig(num_experts=4, k=1), 2, 32, min(1.0, s / 4))
        yield viz.record_from_trace(s, trace, task_loss=1.0 / (s + 1))


def test_training_monitor_draws_every_record():
    mon = TrainingMonitor(_records, steps=5)
    hist = mon.run()
    assert len(hist) == 5 and mon.progress.value == 5
    fw = mon.figures["curves"]
    np.testing.assert_allclose(_named(fw, "E0").y, [h["load_share"][0] for h in hist])
    np.testing.assert_allclose(_named(fw, "max over mean").y, [h["max_over_mean"] for h in hist])
    assert list(_named(fw, "E0").x) == [0, 1, 2, 3, 4]


def test_training_monitor_takes_a_plain_iterable_and_redraws_live():
    seen = []
    mon = TrainingMonitor(_records(3), steps=3, redraw_every=1)
    original = mon.redraw

    def spy():
        original()
        seen.append(len(_named(mon.figures["curves"], "E0").y))

    mon.redraw = spy
    mon.run()
    assert seen[:3] == [1, 2, 3]  # the curves grew while the loop ran


# ---- a real cluster ---------------------------------------------------------------------------

def _real_cluster_class():
    try:
        from moe_lab import cluster
    except ImportError as e:
        pytest.skip(f"moe_lab.cluster not importable: {e}")
    if not hasattr(cluster, "Cluster"):
        pytest.skip("moe_lab.cluster has no Cluster yet")
    return cluster.Cluster


def test_a_slider_runs_a_real_step_on_two_ranks():
    Cluster = _real_cluster_class()
    with Cluster(world_size=2, timeout=60) as cluster:
        pg = Playground(cluster, MoEConfig(num_experts=4, k=2, capacity_factor=1.0), tokens_per_rank=64)
        before = pg.trace.send_counts.copy()
        pg.sliders["skew"].value = 1.0
        assert not np.array_equal(pg.trace.send_counts, before)
        np.testing.assert_array_equal(_z(pg.figures["traffic"]), pg.trace.send_counts)
        assert pg.trace.world_size == 2 and pg.error is None


def test_the_playground_has_no_cosmetic_alpha_control(pg):
    """One forward step cannot react to α: the control lives in the BalancingLab, which trains."""
    assert "aux_alpha" not in pg.sliders
    notes = [c.value for box in pg.widget.children[0].children for c in box.children if isinstance(c, w.HTML)]
    assert any("BalancingLab" in n for n in notes)


def test_copy_figure_grows_new_subplot_axes():
    """A redraw that adds a panel (the lab's figures start empty) creates its axes instead of failing."""
    from plotly.subplots import make_subplots

    target = go.FigureWidget(go.Bar(y=[1, 2]))
    two = make_subplots(rows=1, cols=2)
    two.add_bar(y=[1, 2], row=1, col=1)
    two.add_bar(y=[3, 4], row=1, col=2)
    copy_figure(target, two)
    assert target.layout.xaxis2.domain == two.layout.xaxis2.domain and len(target.data) == 2
    assert list(target.data[1].y) == [3, 4]


def test_copy_figure_keeps_the_page_models_figure_whole_until_a_view_was_drawn():
    """plotly's page module applies update messages only once it has loaded, after the widget's
    model exists: a redraw that reaches a loading page is lost, and the view is drawn from the
    synced `_widget_data` / `_widget_layout`. So these are sent whole with every redraw until the
    page reports a drawn view; after that only the changes travel, and the kernel's copy stays
    whole for a page that asks for the state later."""
    fw = go.FigureWidget()  # the lab's figures start empty, as here
    sent = []
    fw.comm.publish_msg = lambda msg_type, data=None, **kw: sent.append(data)

    def synced_keys():
        return {k for m in sent if m and m.get("method") == "update" for k in m["state"]}

    def whole(fw):
        return _same(fw._widget_data, fw._data) and _same(fw._widget_layout, fw._layout)

    first = go.Figure([go.Bar(y=[1, 2, 3]), go.Scatter(y=[3, 2, 1])], layout=dict(title="first", width=400))
    copy_figure(fw, first)
    assert {"_widget_data", "_widget_layout"} <= synced_keys() and whole(fw)
    assert [t["type"] for t in fw._widget_data] == ["bar", "scatter"] and fw._widget_layout["title"]["text"] == "first"

    sent.clear()  # a slider move before the page drew: changes and the whole figure
    copy_figure(fw, go.Figure([go.Bar(y=[4, 5, 6]), go.Scatter(y=[6, 5, 4])], layout=dict(title="second", width=400)))
    assert {"_py2js_update", "_widget_data", "_widget_layout"} <= synced_keys() and whole(fw)
    assert list(fw._widget_data[0]["y"]) == [4, 5, 6]

    # the page's view drew and reported its trace defaults, as plotly's view does after drawing
    fw._js2py_traceDeltas = {"trace_deltas": [{"uid": t["uid"]} for t in fw._data], "trace_edit_id": fw._last_trace_edit_id}
    sent.clear()
    copy_figure(fw, go.Figure([go.Bar(y=[7, 8, 9]), go.Scatter(y=[9, 8, 7])], layout=dict(title="third", width=400)))
    assert "_py2js_update" in synced_keys() and not synced_keys() & {"_widget_data", "_widget_layout"}
    assert whole(fw) and list(fw.get_state(["_widget_data"])["_widget_data"][0]["y"]) == [7, 8, 9]  # a page asking later

    sent.clear()  # nothing changed: nothing sent
    copy_figure(fw, go.Figure([go.Bar(y=[7, 8, 9]), go.Scatter(y=[9, 8, 7])], layout=dict(title="third", width=400)))
    assert synced_keys() == set()

"""The BalancingLab on 8 real ranks: α acts. Each control change trains the router (forward, backward
through both AlltoAlls, optimizer step) from the same seeded start, and the figures show the result.

Margins the tests use: from a collapsed start, α = 0 leaves the busiest GPU asked for >= 2x its fair
share; the default α = 0.01 brings it to <= 1.3x; the largest α (10) ends with a task loss at least
8 % above the default α's (measured on this task: about 13 %). The aux-loss-free bias (γ = 0.01)
brings a random start, which drifts to ~1.9x without balancing, to <= 1.3x. "Final" = mean of the
last 5 of 40 steps.
"""
import math

import numpy as np
import pytest

from moe_lab import MoEConfig
from moe_lab.cluster import Cluster
from moe_lab.widgets import BalancingLab
from moe_lab.widgets.lab import ALPHAS, final_values

CFG = MoEConfig(num_experts=8, k=2, capacity_factor=1.25, seed=0)
TASK_MARGIN = 1.08


class Counting:
    """The real cluster, counting (and optionally hooking) every run sent to the ranks."""

    def __init__(self, cluster):
        self.cluster, self.calls, self.hook = cluster, [], None

    @property
    def world_size(self):
        return self.cluster.world_size

    def run(self, fn, *args):
        self.calls.append(args)
        if self.hook:
            self.hook(len(self.calls))
        return self.cluster.run(fn, *args)


@pytest.fixture(scope="module")
def cluster():
    with Cluster(world_size=8, timeout=120) as c:
        yield Counting(c)


@pytest.fixture(scope="module")
def lab(cluster):
    return BalancingLab(cluster, CFG, steps=40, tokens_per_rank=128, sweep_alphas=(0.0, 0.01, 10.0))


@pytest.fixture(scope="module")
def default_run(lab):
    assert lab.sliders["aux_alpha"].value == MoEConfig().aux_alpha  # the constructor ran the default
    return list(lab.history)


def busiest(history):
    return final_values(history)["busiest_over_fair"]


def test_default_alpha_balances_the_load(default_run):
    assert len(default_run) == 40
    assert busiest(default_run) <= 1.3
    assert default_run[0]["busiest_over_fair"] >= 3.0  # it started collapsed: every first choice is E0


def test_history_records_follow_the_schema(default_run):
    for rec in default_run:
        assert len(rec["load_share"]) == 8 and sum(rec["load_share"]) == pytest.approx(1.0)
        assert 0.0 <= rec["dropped_share"] < 1.0
        assert math.isfinite(rec["task_loss"]) and math.isfinite(rec["aux_loss"])
        assert sum(rec["gpu_tokens"]) + sum(rec["gpu_dropped"]) == 8 * 128 * 2  # P·N·k copies, kept or dropped


def test_load_bars_are_the_last_records_counts(lab):
    last = lab.history[-1]
    bars = lab.figures["load"].data[0]
    np.testing.assert_array_equal(bars.y, last["gpu_tokens"])
    np.testing.assert_array_equal(lab.figures["load"].data[1].y, last["gpu_dropped"])
    assert lab.progress.value == lab.progress.max == 40
    assert list(lab.figures["curves"].data[2].y) == pytest.approx([r["task_loss"] for r in lab.history])


def test_alpha_zero_from_a_collapsed_start_stays_collapsed(lab, cluster, default_run):
    before = len(cluster.calls)
    lab.sliders["aux_alpha"].value = 0.0  # headless: the run is done when the assignment returns
    assert len(cluster.calls) > before and len(lab.history) == 40
    assert busiest(lab.history) >= 2.0
    np.testing.assert_array_equal(lab.figures["load"].data[0].y, lab.history[-1]["gpu_tokens"])
    assert busiest(lab.history) > busiest(default_run) + 0.7  # the bars moved


def test_largest_alpha_costs_task_loss(lab, default_run):
    lab.sliders["aux_alpha"].value = max(ALPHAS)
    big = final_values(lab.history)["task_loss"]
    assert big >= TASK_MARGIN * final_values(default_run)["task_loss"]


def test_aux_loss_free_bias_balances(lab):
    lab.set(balance="none", start="random")
    drifted = busiest(lab.history)
    lab.set(balance="bias")
    assert lab.sliders["gamma"].value == 0.01
    assert busiest(lab.history) <= 1.3 < drifted
    assert all(r["aux_loss"] == 0.0 for r in lab.history)  # no aux loss in this mode: the bias alone did it
    lab.set(balance="aux", aux_alpha=0.01, start="collapsed")


def test_every_run_starts_from_the_same_seeded_start(lab, default_run):
    lab.set(aux_alpha=0.01)
    again = lab.history
    assert [r["task_loss"] for r in again] == pytest.approx([r["task_loss"] for r in default_run], rel=1e-5)
    assert [r["gpu_tokens"] for r in again] == [r["gpu_tokens"] for r in default_run]


def test_a_change_mid_run_stops_the_stale_run_and_the_latest_wins(lab, cluster):
    lab.set(aux_alpha=0.01)
    stopped, calls = lab.runs_stopped, len(cluster.calls)

    def change_mid_run(n):
        if n == calls + 3:  # the third round trip of the next run: move α twice, the latest must win
            cluster.hook = None
            lab.sliders["aux_alpha"].value = 0.1
            lab.sliders["aux_alpha"].value = 0.0

    cluster.hook = change_mid_run
    lab.sliders["aux_alpha"].value = 1.0
    assert lab.runs_stopped == stopped + 1
    alphas = [args[0].aux_alpha for args in cluster.calls[calls:]]
    assert alphas[:3] == [1.0] * 3 and set(alphas[3:]) == {0.0}  # stopped at a step boundary; 0.1 never ran
    assert busiest(lab.history) >= 2.0  # the figures show the α = 0 run


def test_the_tradeoff_sweep_matches_single_runs_and_is_cached(lab, cluster, default_run):
    lab.set(balance="aux", aux_alpha=0.01, k=2, dropless=False, capacity_factor=1.25, steps=40, start="collapsed")
    points = lab.sweep()
    assert [p["alpha"] for p in points] == [0.0, 0.01, 10.0]
    by_alpha = {p["alpha"]: p for p in points}
    assert by_alpha[0.01]["task_loss"] == pytest.approx(final_values(default_run)["task_loss"], rel=1e-5)
    assert by_alpha[0.0]["busiest_over_fair"] >= 2.0 and by_alpha[0.01]["busiest_over_fair"] <= 1.3
    assert by_alpha[10.0]["task_loss"] >= TASK_MARGIN * by_alpha[0.01]["task_loss"]
    fig = lab.figures["tradeoff"]
    assert list(fig.data[0].y) == pytest.approx([p["busiest_over_fair"] for p in points])
    assert list(fig.data[1].y) == pytest.approx([p["task_loss"] for p in points])
    assert fig.layout.xaxis.type == "log"
    calls = len(cluster.calls)
    assert lab.sweep() == points and len(cluster.calls) == calls  # cached for these settings


@pytest.mark.parametrize("bad, match", [
    (dict(aux_alpha=-0.01), "aux_alpha=-0.01"), (dict(aux_alpha=float("nan")), "aux_alpha=nan"),
    (dict(gamma=-0.1), "gamma=-0.1"), (dict(steps=0), "steps=0"), (dict(k=9), "k=9"),
    (dict(balance="magic"), "balance='magic'"),
])
def test_bad_input_is_refused_before_any_rank_runs(lab, cluster, bad, match):
    calls, history = len(cluster.calls), lab.history
    with pytest.raises(ValueError, match=match):
        lab.set(**bad)
    assert len(cluster.calls) == calls and lab.history is history


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps=0"), (dict(gamma=-1.0), "gamma=-1.0"), (dict(gamma=float("nan")), "gamma=nan"),
    (dict(start="sideways"), "start='sideways'"), (dict(sweep_alphas=(0.0, -1.0)), "aux_alpha=-1.0"),
])
def test_bad_constructor_arguments_start_no_rank(kwargs, match):
    with Cluster(world_size=8, start=False) as c:
        with pytest.raises(ValueError, match=match):
            BalancingLab(c, CFG, **kwargs)
        with pytest.raises(ValueError, match="aux_alpha=nan"):
            BalancingLab(c, CFG.replace(aux_alpha=float("nan")))
        assert not c.running


# ---- the lab's figures, pure functions of records ------------------------------------------------
def test_tradeoff_figure_puts_alpha_zero_on_the_log_axis():
    from moe_lab import viz

    pts = [dict(alpha=a, busiest_over_fair=b, task_loss=t) for a, b, t in ((0.01, 1.1, 0.2), (0.0, 3.0, 0.3), (1.0, 1.0, 0.4))]
    fig = viz.alpha_tradeoff(pts)
    assert list(fig.data[0].x) == [0.001, 0.01, 1.0]  # sorted by α; 0 drawn one decade left of the smallest
    assert list(fig.data[0].y) == [3.0, 1.1, 1.0] and list(fig.data[1].y) == [0.3, 0.2, 0.4]
    assert list(fig.layout.xaxis.ticktext) == ["0", "0.01", "1"]


def test_load_figure_stacks_received_and_dropped_against_the_fair_share():
    from moe_lab import viz

    rec = dict(step=3, gpu_tokens=[320, 100, 100, 100], gpu_dropped=[180, 0, 0, 0], busiest_over_fair=2.5)
    fig = viz.gpu_load(rec, steps=40)
    assert list(fig.data[0].y) == [320, 100, 100, 100] and list(fig.data[1].y) == [180, 0, 0, 0]
    assert list(fig.data[2].y) == [200.0, 200.0]  # (620 received + 180 dropped) / 4 GPUs
    assert "Step 4/40" in fig.layout.title.text and "2.50×" in fig.layout.title.text


def test_expert_time_figure_takes_the_median_over_steps():
    from types import SimpleNamespace

    from moe_lab import viz

    steps = [SimpleNamespace(world_size=2, recv_tokens=np.array([30, 10]),
                             phase_time_s={"experts": np.array([t, 0.001])}) for t in (0.003, 0.9, 0.005)]
    fig = viz.expert_time_vs_rows(steps)
    assert list(fig.data[0].x) == [30, 10] and list(fig.data[0].y) == pytest.approx([5.0, 1.0])  # one slow outlier ignored

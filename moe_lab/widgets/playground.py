"""The Playground: sliders → one real step on the ranks → the `viz` figures, redrawn in place.

A dashboard holds no figure math and no process code: it reads its controls into a `MoEConfig`,
asks its stepper for a `StepTrace` (`cluster.step(...)`, any object with `.step` and
`.world_size` will do), draws the trace with `viz` and copies the result into `go.FigureWidget`s
with `batch_update`, so the page updates in one message, without re-creating the widget.

What each control changes is on screen beside the controls: the per-GPU load and *which*
assignments dropped (the priority control changes no count, only which ones) sit right under
them, the bytes of both dispatch layouts sit under the layout switch, and "running…" shows while
a step runs. Figures take their output's width and wrap beside each other when there is room.

Slow steps and fast drags: sliders report on release (`continuous_update=False`), and a change
that arrives while a step is still running only marks the settings dirty; when the step ends the
*latest* settings run once. In a headless kernel every `.value = ...` runs its step before the
assignment returns, so a cell (or a test) can set a slider and read the new figure right after.
"""
from __future__ import annotations

import html
import threading
import time

import ipywidgets as w
import plotly.graph_objects as go

from .. import viz
from ..config import DISPATCHES, POLICIES, PRIORITIES, MoEConfig
from ..trace import StepTrace
from .common import (BUSY, FULL_WIDTH, HALF_WIDTH, TOKENS_PER_RANK, WIDE, Dashboard, copy_figure, default_config,
                     figure_row, sized)


class Playground(Dashboard):
    """Move a slider, run one real step on every rank, see the AlltoAll buffers, the [P, P] traffic,
    the per-GPU load against capacity and the dropped tokens of exactly that step.

    cluster: a `Cluster` (or anything with `.step(cfg, tokens_per_rank=, skew=, backward=)` and
    `.world_size`). cfg: the starting config (its d_model, seed, ... are kept); tokens_per_rank and
    skew start the N and skew sliders. The constructor runs the first step, so the cell shows the
    default state even if nobody touches a control.
    """

    FIGURES = {"buffers": viz.alltoall_buffers, "traffic": viz.traffic_matrix, "load": viz.per_gpu_load,
               "dropped": viz.dropped_tokens, "priority": viz.dropped_assignments}
    WIDTHS = {"buffers": FULL_WIDTH, "traffic": FULL_WIDTH, "load": HALF_WIDTH, "dropped": FULL_WIDTH,
              "priority": HALF_WIDTH}  # load and priority side by side, right under the controls

    def __init__(self, cluster, cfg: MoEConfig | None = None, tokens_per_rank: int = 512, skew: float = 0.0):
        self.cluster = cluster
        self.world_size = int(cluster.world_size)
        self.cfg = cfg or default_config(self.world_size)
        self.cfg.check_world(self.world_size)
        self.trace: StepTrace | None = None
        self.latency_s: float | None = None
        self.error: Exception | None = None
        self.steps_run = 0
        self._listeners, self._busy, self._dirty, self._last_key = [], False, False, None
        self._flags = threading.Lock()  # JupyterLab may deliver widget events on another kernel thread
        self.sliders = self._make_controls(self.cfg, tokens_per_rank, skew)
        self.status = w.HTML()
        self.busy = w.HTML(layout=w.Layout(min_width="90px"))  # "running…" while a step runs
        self.bytes = w.HTML(layout=w.Layout(width="400px"))  # both dispatch layouts' bytes, beside the switch
        self.refresh()  # the default state, drawn before anyone moves a slider
        self.figures = {name: go.FigureWidget(self._draw(name, self.trace)) for name in self.FIGURES}
        s, f = self.sliders, self.figures
        controls = w.HBox([
            w.VBox([s["k"], s["capacity_factor"], s["dropless"], s["skew"], w.HTML(_ALPHA_NOTE, layout=w.Layout(width="400px"))]),
            w.VBox([s["tokens_per_rank"], s["policy"], s["priority"], s["dispatch"], self.bytes]),
        ], layout=w.Layout(flex_flow="row wrap"))
        self.widget = w.VBox([controls, w.HBox([self.busy, self.status]), figure_row(f["load"], f["priority"]),
                              f["dropped"], f["traffic"], f["buffers"]])
        for control in s.values():
            control.observe(self._on_change, names="value")

    @staticmethod
    def _make_controls(cfg: MoEConfig, tokens_per_rank: int, skew: float) -> dict:
        cf = cfg.capacity_factor
        options = tuple(sorted(set(TOKENS_PER_RANK) | {int(tokens_per_rank)}))
        return dict(
            k=w.IntSlider(value=cfg.k, min=1, max=cfg.num_experts, description="k (experts per token)",
                          continuous_update=False, **WIDE),
            capacity_factor=w.FloatSlider(value=1.25 if cf is None else cf, min=0.25, max=max(4.0, cf or 0),
                                          step=0.05, description="capacity factor", disabled=cf is None,
                                          continuous_update=False, **WIDE),
            dropless=w.Checkbox(value=cf is None, description="dropless (no capacity C)", indent=True),
            skew=w.FloatSlider(value=skew, min=0.0, max=1.0, step=0.05, description="skew (all want E0)",
                               continuous_update=False, **WIDE),
            tokens_per_rank=w.SelectionSlider(options=options, value=int(tokens_per_rank),
                                              description="N tokens per GPU", continuous_update=False, **WIDE),
            policy=w.Dropdown(options=POLICIES, value=cfg.policy, description="over capacity", **WIDE),
            priority=w.Dropdown(options=PRIORITIES, value=cfg.priority, description="priority", **WIDE),
            dispatch=w.Dropdown(options=DISPATCHES, value=cfg.dispatch, description="dispatch buffers", **WIDE),
        )

    # ---- stepping ------------------------------------------------------------------------------
    def settings(self) -> tuple[MoEConfig, int, float]:
        """(cfg, tokens_per_rank, skew) as the controls say now."""
        s = self.sliders
        cfg = self.cfg.replace(
            k=int(s["k"].value), capacity_factor=None if s["dropless"].value else float(s["capacity_factor"].value),
            policy=s["policy"].value, priority=s["priority"].value,
            dispatch=s["dispatch"].value)
        return cfg, int(s["tokens_per_rank"].value), float(s["skew"].value)

    def refresh(self) -> StepTrace:
        """Run one step with the current settings and redraw everything. Errors propagate."""
        cfg, n, skew = self.settings()
        self.busy.value = BUSY
        try:
            t0 = time.perf_counter()
            trace = self.cluster.step(cfg, tokens_per_rank=n, skew=skew, backward=False)
            self.latency_s = time.perf_counter() - t0
            self.trace, self.error, self._last_key = trace, None, (cfg, n, skew)
            self.steps_run += 1
            for name, fw in getattr(self, "figures", {}).items():
                copy_figure(fw, self._draw(name, trace))
            self.status.value = self._summary(trace, cfg)
            self.bytes.value = bytes_html(trace)
        finally:
            self.busy.value = ""
        for callback in self._listeners:
            callback(trace)
        return trace

    def _draw(self, name: str, trace: StepTrace) -> go.Figure:
        return sized(self.FIGURES[name](trace), self.WIDTHS[name])

    def on_step(self, callback) -> None:
        """Call `callback(trace)` after every step (how a TokenTracer follows this playground)."""
        self._listeners.append(callback)

    def _on_change(self, change) -> None:
        self.sliders["capacity_factor"].disabled = bool(self.sliders["dropless"].value)
        with self._flags:
            self._dirty = True
            if self._busy:  # a step is running: its loop picks up the latest settings after it
                return
            self._busy = True
        try:
            while True:
                with self._flags:
                    if not self._dirty:
                        self._busy = False
                        return
                    self._dirty = False
                if self.settings() == self._last_key:
                    continue  # back where the last step was (e.g. toggled twice): nothing to run
                try:
                    self.refresh()
                except Exception as e:  # noqa: BLE001 - show it next to the sliders, keep the last figures
                    self.error = e
                    self.status.value = f"<span style='color:#d62728'><b>step failed:</b> {html.escape(str(e))}</span>"
        except BaseException:
            with self._flags:
                self._busy = False
            raise

    def _summary(self, trace: StepTrace, cfg: MoEConfig) -> str:
        cap = "dropless" if trace.capacity is None else f"C = {trace.capacity}"
        backend = getattr(self.cluster, "backend", None)
        where = f"{self.world_size} GPUs" + (f" ({backend})" if isinstance(backend, str) else "")
        return (f"<b>step {1e3 * self.latency_s:.0f} ms</b> on {where} · {cap} · "
                f"dropped <b>{100 * trace.dropped_share:.1f}%</b> · max/mean load <b>{trace.load_imbalance:.2f}</b> · "
                f"aux loss {trace.aux_loss:.4f} (α = {cfg.aux_alpha:g}; uniform routing gives α)")


# α acts only through training: one forward step cannot react to it, so it is no slider here.
_ALPHA_NOTE = "<small>α (aux loss weight) acts through training: move it in the <b>BalancingLab</b>.</small>"


def bytes_html(trace: StepTrace) -> str:
    """Both dispatch layouts' bytes for this step's routing, as two bars: the one in use in bold."""
    b = viz.dispatch_bytes(trace)
    top = max(b["ragged"], b["padded"], 1)
    rows = []
    for mode, note in (("ragged", "kept rows only"), ("padded", "E·C rows from every GPU")):
        on = mode == b["shown"]
        bar = (f"<span style='display:inline-block;height:10px;width:{120 * b[mode] / top:.0f}px;"
               f"background:{'#1f77b4' if on else '#c9c9c9'}'></span>")
        text = f"{mode} {b[mode] / 1e6:.2f} MB" + (f" ({note})")
        rows.append(f"<div style='white-space:nowrap'>{bar} {'<b>' + text + '</b>' if on else text}</div>")
    waste = 1 - b["ragged"] / b["padded"] if b["padded"] else 0.0
    return ("<div style='font-size:12px;line-height:1.35'>dispatch bytes this step (combine sends as many back):"
            + "".join(rows) + f"<div>padding would be {100 * waste:.0f}% of the padded buffer</div></div>")

"""Dashboards: sliders → one real step on the ranks → the `viz` figures, redrawn in place.

A dashboard holds no figure math and no process code: it reads its controls into a `MoEConfig`,
asks its stepper for a `StepTrace` (`cluster.step(...)`, any object with `.step` and
`.world_size` will do), draws the trace with `viz` and copies the result into `go.FigureWidget`s
with `batch_update`, so the page updates in one message, without re-creating the widget.

Slow steps and fast drags: sliders report on release (`continuous_update=False`), and a change
that arrives while a step is still running only marks the settings dirty; when the step ends the
*latest* settings run once. In a headless kernel every `.value = ...` runs its step before the
assignment returns, so a cell (or a test) can set a slider and read the new figure right after.
"""
from __future__ import annotations

import html
import inspect
import threading
import time

import ipywidgets as w
import plotly.graph_objects as go

from . import viz
from .config import DISPATCHES, POLICIES, PRIORITIES, MoEConfig
from .trace import StepTrace

TOKENS_PER_RANK = (64, 128, 256, 512, 1024, 2048)
_WIDE = dict(style={"description_width": "150px"}, layout=w.Layout(width="420px"))


def copy_figure(target: go.FigureWidget, fig: go.Figure) -> None:
    """Make `target` show `fig`: traces updated in place when they line up (same count and types,
    the usual slider move), replaced otherwise; layout replaced key by key. One batch message.
    The template is left alone: every viz figure uses the default one."""
    same = len(target.data) == len(fig.data) and all(a.type == b.type for a, b in zip(target.data, fig.data))
    if not same:
        target.data = []
        target.add_traces(list(fig.data))
    new_layout = {k: v for k, v in fig.layout.to_plotly_json().items() if k != "template"}
    with target.batch_update():
        if same:
            for old, new in zip(target.data, fig.data):
                props = {k: v for k, v in new.to_plotly_json().items() if k not in ("type", "uid")}
                for stale in set(old.to_plotly_json()) - set(props) - {"type", "uid"}:
                    old[stale] = None
                old.update(props, overwrite=True)
        for stale in set(target.layout.to_plotly_json()) - set(new_layout) - {"template"}:
            target.layout[stale] = None
        target.layout.update(new_layout, overwrite=True)


def default_config(world_size: int) -> MoEConfig:
    """8 experts when they split evenly over the ranks (the chapter's case), else one per rank."""
    return MoEConfig(num_experts=8 if 8 % world_size == 0 else world_size)


class _Dashboard:
    """Shared plumbing: a container widget shown by `display(dashboard)` or as a cell's value."""

    widget: w.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class Playground(_Dashboard):
    """Move a slider, run one real step on every rank, see the AlltoAll buffers, the [P, P] traffic,
    the per-GPU load against capacity and the dropped tokens of exactly that step.

    cluster: a `Cluster` (or anything with `.step(cfg, tokens_per_rank=, skew=, backward=)` and
    `.world_size`). cfg: the starting config (its d_model, seed, ... are kept); tokens_per_rank and
    skew start the N and skew sliders. The constructor runs the first step, so the cell shows the
    default state even if nobody touches a control.
    """

    FIGURES = {"buffers": viz.alltoall_buffers, "traffic": viz.traffic_matrix,
               "load": viz.per_gpu_load, "dropped": viz.dropped_tokens}

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
        self.refresh()  # the default state, drawn before anyone moves a slider
        self.figures = {name: go.FigureWidget(draw(self.trace)) for name, draw in self.FIGURES.items()}
        s = self.sliders
        controls = w.HBox([
            w.VBox([s["k"], s["capacity_factor"], s["dropless"], s["aux_alpha"]]),
            w.VBox([s["skew"], s["tokens_per_rank"], s["policy"], s["priority"], s["dispatch"]]),
        ])
        f = self.figures
        self.widget = w.VBox([controls, self.status, w.HBox([f["traffic"], f["load"]]), f["dropped"], f["buffers"]])
        for control in s.values():
            control.observe(self._on_change, names="value")

    @staticmethod
    def _make_controls(cfg: MoEConfig, tokens_per_rank: int, skew: float) -> dict:
        cf = cfg.capacity_factor
        options = tuple(sorted(set(TOKENS_PER_RANK) | {int(tokens_per_rank)}))
        return dict(
            k=w.IntSlider(value=cfg.k, min=1, max=cfg.num_experts, description="k (experts per token)",
                          continuous_update=False, **_WIDE),
            capacity_factor=w.FloatSlider(value=1.25 if cf is None else cf, min=0.25, max=max(4.0, cf or 0),
                                          step=0.05, description="capacity factor", disabled=cf is None,
                                          continuous_update=False, **_WIDE),
            dropless=w.Checkbox(value=cf is None, description="dropless (no capacity C)", indent=True),
            aux_alpha=w.FloatSlider(value=cfg.aux_alpha, min=0.0, max=max(0.1, cfg.aux_alpha), step=0.001,
                                    readout_format=".3f", description="α (aux loss weight)",
                                    continuous_update=False, **_WIDE),
            skew=w.FloatSlider(value=skew, min=0.0, max=1.0, step=0.05, description="skew (all want E0)",
                               continuous_update=False, **_WIDE),
            tokens_per_rank=w.SelectionSlider(options=options, value=int(tokens_per_rank),
                                              description="N tokens per GPU", continuous_update=False, **_WIDE),
            policy=w.Dropdown(options=POLICIES, value=cfg.policy, description="over capacity", **_WIDE),
            priority=w.Dropdown(options=PRIORITIES, value=cfg.priority, description="priority", **_WIDE),
            dispatch=w.Dropdown(options=DISPATCHES, value=cfg.dispatch, description="dispatch buffers", **_WIDE),
        )

    # ---- stepping ------------------------------------------------------------------------------
    def settings(self) -> tuple[MoEConfig, int, float]:
        """(cfg, tokens_per_rank, skew) as the controls say now."""
        s = self.sliders
        cfg = self.cfg.replace(
            k=int(s["k"].value), capacity_factor=None if s["dropless"].value else float(s["capacity_factor"].value),
            aux_alpha=float(s["aux_alpha"].value), policy=s["policy"].value, priority=s["priority"].value,
            dispatch=s["dispatch"].value)
        return cfg, int(s["tokens_per_rank"].value), float(s["skew"].value)

    def refresh(self) -> StepTrace:
        """Run one step with the current settings and redraw everything. Errors propagate."""
        cfg, n, skew = self.settings()
        t0 = time.perf_counter()
        trace = self.cluster.step(cfg, tokens_per_rank=n, skew=skew, backward=False)
        self.latency_s = time.perf_counter() - t0
        self.trace, self.error, self._last_key = trace, None, (cfg, n, skew)
        self.steps_run += 1
        for name, fw in getattr(self, "figures", {}).items():
            copy_figure(fw, self.FIGURES[name](trace))
        self.status.value = self._summary(trace, cfg)
        for callback in self._listeners:
            callback(trace)
        return trace

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


class TokenTracer(_Dashboard):
    """Pick a GPU and a token: where do its k copies go, and how do they come back?

    trace_source: a StepTrace, a Playground (follows its latest step) or a callable returning a
    StepTrace (called on every redraw).
    """

    def __init__(self, trace_source, rank: int = 0, token: int = 0):
        self._source = trace_source
        self._syncing = False
        trace = self.current_trace()
        self.sliders = dict(
            rank=w.IntSlider(value=rank, min=0, max=trace.world_size - 1, description="GPU (source)", **_WIDE),
            token=w.IntSlider(value=token, min=0, max=trace.tokens_per_rank - 1, description="token", **_WIDE),
        )
        self.text = w.HTML()
        self.figures = {"path": go.FigureWidget(viz.token_path(trace, rank, token))}
        self.refresh()
        for s in self.sliders.values():
            s.observe(lambda change: self.refresh(), names="value")
        if hasattr(trace_source, "on_step"):
            trace_source.on_step(lambda trace: self.refresh())
        self.widget = w.VBox([w.HBox(list(self.sliders.values())), self.text, self.figures["path"]])

    def current_trace(self) -> StepTrace:
        src = self._source
        if isinstance(src, StepTrace):
            return src
        return src.trace if hasattr(src, "trace") else src()

    @property
    def description(self) -> str:
        return viz.describe_token_path(self.current_trace(), self.sliders["rank"].value, self.sliders["token"].value)

    def refresh(self) -> None:
        if self._syncing:
            return
        trace = self.current_trace()
        self._syncing = True
        try:  # a new step may have fewer GPUs or tokens: clamp the sliders without redrawing twice
            self.sliders["rank"].max = trace.world_size - 1
            self.sliders["token"].max = trace.tokens_per_rank - 1
        finally:
            self._syncing = False
        rank, token = self.sliders["rank"].value, self.sliders["token"].value
        copy_figure(self.figures["path"], viz.token_path(trace, rank, token))
        self.text.value = f"<pre style='line-height:1.3'>{html.escape(self.description)}</pre>"


class TrainingMonitor(_Dashboard):
    """Run a training loop and watch load balance live: a progress bar and `training_curves`.

    run_fn: a callable `run_fn(steps)` (or `run_fn()`) returning an iterator of history records
    (one per step, schema in `viz_training`), or such an iterable itself. Nothing runs until
    `.run()` or the Run button; the curves redraw every `redraw_every` steps and at the end.
    """

    def __init__(self, run_fn, steps: int, redraw_every: int = 1, num_experts: int | None = None):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r}: must be a whole number >= 1")
        self.run_fn, self.steps, self.redraw_every = run_fn, steps, max(1, int(redraw_every))
        self.history: list = []
        self.progress = w.IntProgress(value=0, min=0, max=steps, description="step 0/" + str(steps))
        self.status = w.HTML()
        self.button = w.Button(description="Run", icon="play")
        self.button.on_click(lambda _: self.run())
        self.figures = {"curves": go.FigureWidget(viz.training_curves([], num_experts=num_experts))}
        self.widget = w.VBox([w.HBox([self.button, self.progress, self.status]), self.figures["curves"]])

    def _records(self):
        fn = self.run_fn
        if not callable(fn):
            return iter(fn)
        try:
            takes_steps = bool(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            takes_steps = True
        return iter(fn(self.steps) if takes_steps else fn())

    def run(self) -> list:
        """Consume up to `steps` records, redrawing as they come. Returns the history."""
        self.history = []
        self.button.disabled = True
        t0 = time.perf_counter()
        try:
            for i, record in enumerate(self._records()):
                if i >= self.steps:
                    break
                self.history.append(record)
                self.progress.value = i + 1
                self.progress.description = f"step {i + 1}/{self.steps}"
                if (i + 1) % self.redraw_every == 0:
                    self.redraw()
        finally:
            self.button.disabled = False
        self.redraw()
        self.status.value = f"{len(self.history)} steps in {time.perf_counter() - t0:.1f} s"
        return self.history

    def redraw(self) -> None:
        copy_figure(self.figures["curves"], viz.training_curves(self.history))

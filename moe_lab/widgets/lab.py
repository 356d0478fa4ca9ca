"""BalancingLab: move α (or the balancing method, k, capacity, ...) and the router trains on the ranks.

One forward step cannot react to α: the aux loss only acts through training. So every change here
trains the layer on the real ranks (forward + backward through both AlltoAlls, router all-reduce,
Adam) from the same seeded start, and redraws the per-GPU load, the curves per step and, at the
end, the drops. A button measures the trade-off over a handful of α values: too little α and the
load collapses onto one GPU, too much and the task loss pays (Switch, arXiv 2101.03961; aux-loss-free
bias: DeepSeek-V3, arXiv 2412.19437).

Runs and changes: a change from the browser starts the run on a worker thread, so the kernel stays
free to hear the next change; a change that arrives mid-run makes the stale run stop once the ranks
finish the steps they are on (at most `redraw_every`: they run that many per call, between redraws)
and the latest settings run. A change made in code (`lab.sliders["aux_alpha"].value =
0.1`, or `lab.set(...)`) runs the training before the assignment returns, so a headless cell or a
test reads the new figures right after.
"""
from __future__ import annotations

import html
import math
import threading
import time

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go

from .. import viz
from ..config import MoEConfig, check_tokens_per_rank
from ..train import BALANCE, STARTS, check_training, merge_step, train_steps_on_rank
from .common import WIDE, Dashboard, copy_figure, default_config

ALPHAS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)  # log steps, and 0
GAMMAS = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SWEEP_ALPHAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
FINAL_STEPS = 5  # "final" values are the mean of the last steps: one step's counts are noisy


def final_values(history, last: int = FINAL_STEPS) -> dict:
    """busiest GPU / fair share, task loss and dropped share at the end of a run (mean of the last steps)."""
    tail = list(history)[-last:]
    return {name: float(np.mean([r[name] for r in tail])) for name in ("busiest_over_fair", "task_loss", "dropped_share")}


class BalancingLab(Dashboard):
    """A dashboard that trains the router on the ranks whenever a control moves.

    cluster: a `Cluster`; cfg: the layer (E, k, capacity factor, α, d, seed; default 8 experts);
    steps, tokens_per_rank: the length and batch of every run; balance: "none" / "aux" / "bias" /
    "aux+bias"; start: "collapsed" (every token's first choice is expert 0) or "random"; gamma (γ):
    the bias step of aux-loss-free balancing; lr: Adam's learning rate; redraw_every: live redraw
    interval in steps; sweep_alphas: the α values of the trade-off figure.
    Handles: `sliders[name]`, `figures[name]` ("load", "curves", "dropped", "tradeoff"), `history`
    (one record per step of the last completed run, schema in `moe_lab.train.merge_step`).
    """

    def __init__(self, cluster, cfg: MoEConfig | None = None, steps: int = 40, tokens_per_rank: int = 128,
                 balance: str = "aux", start: str = "collapsed", gamma: float = 0.01, lr: float = 0.01,
                 redraw_every: int = 5, sweep_alphas=SWEEP_ALPHAS):
        self.cluster = cluster
        self.world_size = int(cluster.world_size)
        cfg = cfg or default_config(self.world_size)
        cfg.check_world(self.world_size)
        check_training(steps, balance, gamma, start, lr)
        check_tokens_per_rank(tokens_per_rank)
        if isinstance(redraw_every, bool) or not isinstance(redraw_every, int) or redraw_every < 1:
            raise ValueError(f"redraw_every={redraw_every!r}: must be a whole number >= 1")
        sweep_alphas = tuple(sweep_alphas)
        if not sweep_alphas:
            raise ValueError("sweep_alphas is empty: give a few α values, e.g. (0, 1e-3, 1e-2, 1e-1, 1)")
        for a in sweep_alphas:
            _check_alpha(a)
        self.cfg, self.tokens_per_rank, self.lr = cfg, tokens_per_rank, lr
        self.redraw_every, self.sweep_alphas = redraw_every, sweep_alphas
        self.history: list = []
        self.sweeps: dict = {}  # settings without α -> trade-off points (cached)
        self.runs_done = self.runs_stopped = 0
        self.run_s = self.first_redraw_s = self.ranks_s = None
        self.error: Exception | None = None
        self._busy = self._dirty = self._sweep_wanted = self._holding = False
        self._worker: threading.Thread | None = None
        self._last_key = None
        self._flags = threading.Lock()
        self.sliders = self._make_controls(cfg, steps, balance, start, gamma)
        self.progress = w.IntProgress(value=0, min=0, max=steps, description="step 0", layout=w.Layout(width="420px"))
        self.status = w.HTML()
        self.sweep_button = w.Button(description="measure the α trade-off", icon="line-chart",
                                     layout=w.Layout(width="220px"))
        self.sweep_status = w.HTML()
        self.figures = {"load": go.FigureWidget(), "curves": go.FigureWidget(), "dropped": go.FigureWidget(),
                        "tradeoff": go.FigureWidget(viz.alpha_tradeoff([], "press the button to measure it"))}
        self._run_settings(self.settings())  # the default state, drawn before anyone moves a control
        s, f = self.sliders, self.figures
        controls = w.HBox([w.VBox([s["aux_alpha"], s["balance"], s["gamma"], s["start"]]),
                           w.VBox([s["k"], s["capacity_factor"], s["dropless"], s["steps"]])])
        self.widget = w.VBox([controls, w.HBox([self.progress, self.status]), w.HBox([f["load"], f["dropped"]]),
                              f["curves"], w.HBox([self.sweep_button, self.sweep_status]), f["tradeoff"]])
        for control in s.values():
            control.observe(self._on_change, names="value")
        self.sweep_button.on_click(lambda _: self._request(sweep=True, background=True))

    @staticmethod
    def _make_controls(cfg: MoEConfig, steps: int, balance: str, start: str, gamma: float) -> dict:
        cf = cfg.capacity_factor
        return dict(
            aux_alpha=w.SelectionSlider(options=_options(ALPHAS, cfg.aux_alpha), value=cfg.aux_alpha,
                                        description="α (aux loss weight)", continuous_update=False, **WIDE),
            balance=w.Dropdown(options=BALANCE, value=balance, description="balancing", **WIDE),
            gamma=w.SelectionSlider(options=_options(GAMMAS, gamma), value=gamma, description="γ (bias step)",
                                    continuous_update=False, **WIDE),
            start=w.Dropdown(options=[("collapsed (all tokens pick E0 first)", "collapsed"), ("random", "random")],
                             value=start, description="router start", **WIDE),
            k=w.IntSlider(value=cfg.k, min=1, max=cfg.num_experts, description="k (experts per token)",
                          continuous_update=False, **WIDE),
            capacity_factor=w.FloatSlider(value=1.25 if cf is None else cf, min=0.25, max=max(4.0, cf or 0), step=0.05,
                                          description="capacity (factor)", disabled=cf is None,
                                          continuous_update=False, **WIDE),
            dropless=w.Checkbox(value=cf is None, description="dropless (no capacity C)", indent=True),
            steps=w.IntSlider(value=steps, min=1, max=max(200, steps), description="training steps",
                              continuous_update=False, **WIDE),
        )

    # ---- settings ------------------------------------------------------------------------------
    def settings(self) -> dict:
        """The run the controls describe now: cfg, steps, balance, gamma, start."""
        s = self.sliders
        cfg = self.cfg.replace(k=int(s["k"].value), aux_alpha=float(s["aux_alpha"].value),
                               capacity_factor=None if s["dropless"].value else float(s["capacity_factor"].value))
        return dict(cfg=cfg, steps=int(s["steps"].value), balance=s["balance"].value, gamma=float(s["gamma"].value),
                    start=s["start"].value)

    def set(self, **values) -> list:
        """Set several controls at once (names of `sliders`), checked first, then one run. Returns the history."""
        unknown = sorted(set(values) - set(self.sliders))
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; choose from {sorted(self.sliders)}")
        if "aux_alpha" in values:
            _check_alpha(values["aux_alpha"])
        cur = self.settings()
        check_training(values.get("steps", cur["steps"]), values.get("balance", cur["balance"]),
                       values.get("gamma", cur["gamma"]), values.get("start", cur["start"]), self.lr)
        cf = values.get("capacity_factor", self.sliders["capacity_factor"].value)
        cur["cfg"].replace(k=values.get("k", cur["cfg"].k), capacity_factor=cf)  # raises ValueError on bad k / cf
        self._holding = True  # the observers below only mark the settings dirty: one run for all
        try:
            for name, v in values.items():
                control = self.sliders[name]
                if isinstance(control, w.SelectionSlider) and v not in control.options:
                    control.options = _options([o[1] for o in control.options], v)
                control.value = v
        finally:
            self._holding = False
        self._request()
        return self.history

    @property
    def idle(self) -> bool:
        """No run going or waiting, and the figures show the run of the controls' current settings."""
        with self._flags:
            quiet = not (self._busy or self._dirty or self._sweep_wanted)
        return quiet and self._last_key == _key(self.settings())

    # ---- running -------------------------------------------------------------------------------
    def _on_change(self, change) -> None:
        self.sliders["capacity_factor"].disabled = bool(self.sliders["dropless"].value)
        if self._holding:
            self._dirty = True
            return
        # a change that came from the browser holds the widget's property lock while observers run
        from_browser = bool(getattr(change.get("owner"), "_property_lock", None))
        self._request(background=from_browser)

    def _request(self, sweep: bool = False, background: bool = False) -> None:
        with self._flags:
            if sweep:
                self._sweep_wanted = True
            else:
                self._dirty = True
            worker = self._worker
            start = not self._busy
            if start:
                self._busy = True
                if background:
                    worker = self._worker = threading.Thread(target=self._work, name="balancing-lab", daemon=True)
        if start:
            if background:
                worker.start()
            else:
                self._work(raise_errors=True)
        elif not background and worker is not None and worker is not threading.current_thread():
            worker.join()  # a change in code while the browser's run goes on: return once the latest ran

    def _work(self, raise_errors: bool = False) -> None:
        """Run what is wanted until nothing is: the latest settings first, then a requested sweep."""
        try:
            while True:
                with self._flags:
                    if self._dirty:
                        self._dirty, job = False, "train"
                    elif self._sweep_wanted:
                        self._sweep_wanted, job = False, "sweep"
                    else:
                        self._busy, self._worker = False, None
                        return
                try:
                    if job == "train":
                        settings = self.settings()
                        if _key(settings) != self._last_key:
                            self._run_settings(settings)
                    else:
                        self._sweep()
                except Exception as e:  # noqa: BLE001 - show it beside the controls, keep the last figures
                    self.error = e
                    self.status.value = f"<span style='color:#d62728'><b>run failed:</b> {html.escape(str(e))}</span>"
                    if raise_errors:
                        raise
        except BaseException:
            with self._flags:
                self._busy, self._worker = False, None
            raise

    def _train(self, settings: dict):
        """One run of `settings` on the ranks; yields the history so far after every call to the ranks
        (one step, then `redraw_every` at a time). Stops, returning early, after the first call that
        ends once a newer change has arrived."""
        cfg, steps, balance = settings["cfg"], settings["steps"], settings["balance"]
        if balance not in ("aux", "aux+bias"):
            cfg = cfg.replace(aux_alpha=0.0)
        history, first = [], 0
        self.ranks_s = 0.0  # time spent waiting for the ranks in this run (the rest is drawing)
        while first < steps:
            if self._dirty:
                return
            count = 1 if first == 0 else min(self.redraw_every, steps - first)  # the first redraw comes fast
            t0 = time.perf_counter()
            parts = self.cluster.run(train_steps_on_rank, cfg, self.tokens_per_rank, balance, self.lr,
                                     settings["gamma"], settings["start"], first, count)
            self.ranks_s += time.perf_counter() - t0
            for i in range(count):
                history.append(merge_step(first + i, [p[i] for p in parts], self.world_size, balance))
            first += count
            yield history

    def _run_settings(self, settings: dict) -> None:
        steps = settings["steps"]
        self.progress.max, self.progress.value = steps, 0
        t0 = time.perf_counter()
        history = []
        for history in self._train(settings):
            self.progress.value = len(history)
            self.progress.description = f"step {len(history)}/{steps}"
            self._redraw(history, steps, final=len(history) == steps)
            if len(history) == 1:
                self.first_redraw_s = time.perf_counter() - t0
        if len(history) < steps:  # stale: a newer change is waiting
            self.runs_stopped += 1
            return
        self.run_s = time.perf_counter() - t0
        self.history, self._last_key = history, _key(settings)
        self.runs_done += 1
        end = final_values(history)
        self.status.value = (f"<b>{steps} steps in {self.run_s:.1f} s</b> on {self.world_size} GPUs · busiest GPU "
                             f"<b>{end['busiest_over_fair']:.2f}×</b> fair share · dropped "
                             f"<b>{100 * end['dropped_share']:.1f}%</b> · task loss <b>{end['task_loss']:.3f}</b>"
                             f" <small>(mean of the last {min(FINAL_STEPS, steps)} steps)</small>")
        self._draw_tradeoff()

    def _redraw(self, history: list, steps: int, final: bool) -> None:
        copy_figure(self.figures["load"], viz.gpu_load(history[-1], steps))
        copy_figure(self.figures["curves"], viz.lab_curves(history, steps))
        if final or not self.figures["dropped"].data:
            copy_figure(self.figures["dropped"], viz.expert_drops(history[-1]))

    # ---- the trade-off -------------------------------------------------------------------------
    def sweep(self) -> list:
        """Final busiest/fair-share and task loss for each of `sweep_alphas` with the other settings
        as they are (the aux loss switched on), each a full run from the same start; what the button
        does, run before this returns. Cached per settings. Returns the points (dicts with alpha,
        busiest_over_fair, task_loss, dropped_share)."""
        self._request(sweep=True)  # through the same queue as the controls: one run on the ranks at a time
        return self.sweeps.get(self._sweep_key(), [])

    def _sweep_key(self) -> tuple:
        settings = self.settings()
        balance = "aux+bias" if settings["balance"] in ("bias", "aux+bias") else "aux"
        return _key(dict(settings, balance=balance, cfg=settings["cfg"].replace(aux_alpha=0.0)))

    def _sweep(self) -> None:
        settings = self.settings()
        balance = "aux+bias" if settings["balance"] in ("bias", "aux+bias") else "aux"
        key = self._sweep_key()
        if key not in self.sweeps:
            points = []
            for i, alpha in enumerate(self.sweep_alphas):
                self.sweep_status.value = f"training with α = {alpha:g} ({i + 1}/{len(self.sweep_alphas)}) ..."
                run = dict(settings, balance=balance, cfg=settings["cfg"].replace(aux_alpha=float(alpha)))
                history = []
                for history in self._train(run):
                    pass
                if len(history) < run["steps"]:
                    self.sweep_status.value = "stopped: the settings changed; press again"
                    return
                points.append(dict(alpha=float(alpha), **final_values(history)))
            self.sweeps[key] = points
        self._draw_tradeoff()

    def _draw_tradeoff(self) -> None:
        settings = self.settings()
        balance = "aux+bias" if settings["balance"] in ("bias", "aux+bias") else "aux"
        points = self.sweeps.get(self._sweep_key())
        if points is None:
            self.sweep_status.value = "not measured for these settings yet"
            return
        cfg = settings["cfg"]
        cap = "dropless" if cfg.capacity_factor is None else f"capacity factor {cfg.capacity_factor:g}"
        note = (f"{settings['steps']} steps from a {settings['start']} router, k = {cfg.k}, {cap}, "
                f"balancing {balance}; final = mean of the last {FINAL_STEPS} steps")
        copy_figure(self.figures["tradeoff"], viz.alpha_tradeoff(points, note))
        self.sweep_status.value = f"measured over α = {', '.join(f'{a:g}' for a in self.sweep_alphas)}"


def _check_alpha(a) -> None:
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
        raise ValueError(f"aux_alpha={a!r}: α must be a finite number >= 0 (0 switches the aux loss off)")


def _options(values, extra) -> list:
    """(label, value) pairs for a log-spaced SelectionSlider, with `extra` added in order."""
    vals = sorted(set(float(v) for v in values) | {float(extra)})
    return [(f"{v:g}", v) for v in vals]


def _key(settings: dict) -> tuple:
    return tuple(sorted(settings.items(), key=lambda kv: kv[0]))

"""TrainingMonitor: a training loop's records as they come — a progress bar and live curves."""
from __future__ import annotations

import inspect
import time

import ipywidgets as w
import plotly.graph_objects as go

from .. import viz
from .common import Dashboard, copy_figure


class TrainingMonitor(Dashboard):
    """Run a training loop and watch load balance live: a progress bar and `training_curves`.

    run_fn: a callable `run_fn(steps)` (or `run_fn()`) returning an iterator of history records
    (one per step, schema in `moe_lab.viz.training`), or such an iterable itself. Nothing runs until
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

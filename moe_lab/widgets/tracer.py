"""TokenTracer: the chapter's Question for any token — where do its k copies go, and how do they
come back? Follows a Playground's latest step, or draws a fixed StepTrace."""
from __future__ import annotations

import html

import ipywidgets as w
import plotly.graph_objects as go

from .. import viz
from ..trace import StepTrace
from .common import FULL_WIDTH, WIDE, Dashboard, copy_figure, sized


class TokenTracer(Dashboard):
    """Pick a GPU and a token: where do its k copies go, and how do they come back?

    trace_source: a StepTrace, a Playground (follows its latest step) or a callable returning a
    StepTrace (called on every redraw).
    """

    def __init__(self, trace_source, rank: int = 0, token: int = 0):
        self._source = trace_source
        self._syncing = False
        trace = self.current_trace()
        self.sliders = dict(
            rank=w.IntSlider(value=rank, min=0, max=trace.world_size - 1, description="GPU (source)", **WIDE),
            token=w.IntSlider(value=token, min=0, max=trace.tokens_per_rank - 1, description="token", **WIDE),
        )
        self.text = w.HTML()
        self.figures = {"path": go.FigureWidget(sized(viz.token_path(trace, rank, token), FULL_WIDTH))}
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
        copy_figure(self.figures["path"], sized(viz.token_path(trace, rank, token), FULL_WIDTH))
        self.text.value = f"<pre style='line-height:1.3;white-space:pre-wrap'>{html.escape(self.description)}</pre>"

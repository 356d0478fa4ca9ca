"""Load balance over training: does routing collapse onto a few experts, and does α stop it?

A training loop reports one *history record* per step: a dict (or any object with these
attributes). Every figure here reads only these fields, so any loop can be drawn:

    step           int     the training step
    load_share     [E]     f_i: share of the step's assignments that chose expert E_i (sums to 1)
    max_over_mean  float   max_i f_i / mean_i f_i = E · max_i f_i; 1 = balanced, E = one expert takes all
    dropped_share  float   dropped assignments / all assignments (0 when dropless)
    aux_loss       float   L_aux = α · P · Σ_i f_i · p_i of the step
    task_loss      float   the task's own loss (without L_aux)

Only `step` and `load_share` are required; a missing or None value leaves a gap, a missing
`max_over_mean` is computed from `load_share`, and other keys (e.g. the balancing method) are ignored. `record_from_trace` builds a record from a StepTrace.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..trace import StepTrace
from .style import DROPPED_COLOR, expert_colors

HISTORY_FIELDS = ("step", "load_share", "max_over_mean", "dropped_share", "aux_loss", "task_loss")


def record_from_trace(step: int, trace: StepTrace, task_loss: float | None = None) -> dict:
    """One history record from the trace of a training step (f_i counted before capacity)."""
    chosen = np.asarray(trace.chosen_count, float)  # [E] assignments that chose each expert
    share = chosen / max(chosen.sum(), 1.0)
    return dict(step=int(step), load_share=share.tolist(), max_over_mean=float(share.max() * len(share)),
                dropped_share=trace.dropped_share, aux_loss=float(trace.aux_loss),
                task_loss=None if task_loss is None else float(task_loss))


def _get(rec, name):
    value = rec.get(name) if isinstance(rec, dict) else getattr(rec, name, None)
    if name == "max_over_mean" and value is None:
        share = np.asarray(_get(rec, "load_share"), float)
        value = float(share.max() * len(share)) if share.size and share.sum() > 0 else None
    return value


def _column(history, name) -> list:
    """One field over the steps, None for a gap (plotly draws None as a break in the line)."""
    out = []
    for rec in history:
        v = _get(rec, name)
        out.append(None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v))
    return out


def training_curves(history, num_experts: int | None = None) -> go.Figure:
    """Per-expert load share (stacked: a collapse is one colour taking over), max/mean load,
    dropped share, aux loss and task loss, all against the training step."""

    history = list(history)
    steps = [int(_get(rec, "step")) for rec in history]
    shares = np.array([np.asarray(_get(rec, "load_share"), float) for rec in history])  # [T, E]
    E = shares.shape[1] if history else (num_experts or 0)
    fig = make_subplots(rows=2, cols=3, specs=[[{"rowspan": 2}, {}, {}], [None, {}, {}]],
                        subplot_titles=["load share f_i per expert", "max / mean load (1 = balanced)",
                                        "dropped share", "aux loss L_aux", "task loss"],
                        horizontal_spacing=0.08, vertical_spacing=0.16)
    colors = expert_colors(max(E, 1))
    for e in range(E):
        fig.add_trace(go.Scatter(x=steps, y=shares[:, e] if history else [], name=f"E{e}", mode="lines",
                                 stackgroup="share", line=dict(width=0.5, color=colors[e])), row=1, col=1)
    panels = [("max_over_mean", 1, 2, "black"), ("dropped_share", 1, 3, DROPPED_COLOR),
              ("aux_loss", 2, 2, "#ff7f0e"), ("task_loss", 2, 3, "#2ca02c")]
    for name, row, col, color in panels:
        fig.add_trace(go.Scatter(x=steps, y=_column(history, name), name=name.replace("_", " "), mode="lines",
                                 line=dict(color=color), showlegend=False), row=row, col=col)
    fig.add_hline(y=1.0, line=dict(color="grey", dash="dot"), row=1, col=2)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="training step", row=2)
    fig.update_xaxes(title_text="training step", row=1, col=1)
    last = _get(history[-1], "max_over_mean") if history else None
    fig.update_layout(title="Does routing collapse? Load over training"
                      + (f" (now max/mean = {last:.2f} of at most {E})" if last is not None else ""),
                      height=520, legend=dict(title="expert", traceorder="normal"))
    return fig


def compare_runs(runs: dict) -> go.Figure:
    """max/mean load and task loss of several runs on shared axes, e.g. α = 0 against α > 0
    against bias balancing: balance bought at what price in task loss?"""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["max / mean load (1 = balanced)", "task loss"])
    palette = qualitative.D3
    for i, (name, history) in enumerate(runs.items()):
        history = list(history)
        steps = [int(_get(rec, "step")) for rec in history]
        color = palette[i % len(palette)]
        for col, field in ((1, "max_over_mean"), (2, "task_loss")):
            fig.add_trace(go.Scatter(x=steps, y=_column(history, field), name=str(name), legendgroup=str(name),
                                     showlegend=col == 1, mode="lines", line=dict(color=color)), row=1, col=col)
    fig.add_hline(y=1.0, line=dict(color="grey", dash="dot"), row=1, col=1)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="max / mean tokens per expert", row=1, col=1)
    fig.update_layout(title="Balancing compared: max/mean load and task loss per run", height=420)
    return fig

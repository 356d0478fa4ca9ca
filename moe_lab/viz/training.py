"""Load balance over training: does routing collapse onto a few experts, and does α stop it?

A training loop reports one *history record* per step: a dict (or any object with these
attributes). Every figure here reads only these fields, so any loop can be drawn:

    step           int     the training step
    load_share     [E]     f_i: share of the step's assignments that chose expert E_i (sums to 1)
    max_over_mean  float   max_i f_i / mean_i f_i = E · max_i f_i; 1 = balanced, E/k = one expert in every token's top-k
    dropped_share  float   dropped assignments / all assignments (0 when dropless)
    aux_loss       float   L_aux = α · E · Σ_{i=1}^{E} f_i · p_i of the step (E experts; E = P with one per GPU)
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
from .style import DROPPED_COLOR, KEPT_COLOR, expert_colors, figure, gpu_label, trace

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
                                        "dropped share", "aux loss α·E·Σ f_i p_i", "task loss"],
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
    # each token picks an expert at most once, so f_i <= 1/k and max/mean <= E/k (E/k = 4 for E = 8, k = 2)
    fig.update_layout(title="Does routing collapse? Load over training"
                      + (f" (now max/mean = {last:.2f}; E/k is the most it can be)" if last is not None else ""),
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


# ---- the balancing lab: per-GPU load of one step, curves per step, the α trade-off ----------------
# The lab redraws these every few training steps, so they are written in plotly's canonical form and
# built without validation (style.figure; tests/test_viz.py checks each against its validated twin).
def gpu_load(record, steps: int | None = None) -> go.Figure:
    """Token copies each GPU received in one training step (first trace), the copies dropped on the
    way (stacked on top: together they are what the GPU was asked for) and the fair share N·k."""
    got = np.asarray(_get(record, "gpu_tokens"), float)  # [P] received (kept)
    dropped = np.asarray(_get(record, "gpu_dropped"), float)  # [P] wanted this GPU, dropped
    P = len(got)
    x = np.arange(P)
    fair = float(got.sum() + dropped.sum()) / max(P, 1)  # every GPU's share of all P·N·k copies
    busiest = _get(record, "busiest_over_fair")
    data = [trace("bar", x=x, y=got, name="received", marker=dict(color=KEPT_COLOR)),
            trace("bar", x=x, y=dropped, name="dropped", marker=dict(color=DROPPED_COLOR)),
            trace("scatter", x=[-0.5, P - 0.5], y=[fair, fair], mode="lines", name=f"fair share {fair:.0f}",
                  line=dict(color="black", dash="dot"))]
    step = int(_get(record, "step"))
    of = f"/{steps}" if steps else ""
    return figure(data, dict(
        barmode="stack", width=430, height=330, margin=dict(l=50, r=10, t=60, b=40),
        title=dict(text=f"Step {step + 1}{of}: busiest GPU asked for {busiest:.2f}× its fair share", font=dict(size=13)),
        xaxis=dict(tickvals=list(x), ticktext=[gpu_label(r) for r in x]), yaxis=dict(title=dict(text="token copies")),
        legend=_LEGEND_ON_TOP))


_LEGEND_ON_TOP = dict(orientation="h", y=1.0, yanchor="bottom", x=0, font=dict(size=11))


def lab_curves(history, steps: int | None = None) -> go.Figure:
    """Busiest GPU over its fair share, dropped share and task loss, per training step; three panels
    laid out by hand (cheaper to redraw live than make_subplots)."""
    history = list(history)
    x = [int(_get(rec, "step")) + 1 for rec in history]
    panels = [("busiest_over_fair", "busiest GPU / fair share", "black"),
              ("dropped_share", "dropped share", DROPPED_COLOR), ("task_loss", "task loss", "#2ca02c")]
    data, annotations = [], []
    layout = dict(height=260, margin=dict(l=40, r=10, t=50, b=40), showlegend=False)
    span = [0.5, max(steps or 0, len(x)) + 0.5]
    for i, (field, title, color) in enumerate(panels):
        ax = "" if i == 0 else str(i + 1)
        lo, hi = i / 3 + 0.04, (i + 1) / 3 - 0.04
        data.append(trace("scatter", x=x, y=_column(history, field), mode="lines", name=title,
                          line=dict(color=color), xaxis=f"x{ax}", yaxis=f"y{ax}"))
        layout[f"xaxis{ax}"] = dict(domain=[lo, hi], range=span, anchor=f"y{ax}", title=dict(text="step"))
        layout[f"yaxis{ax}"] = dict(anchor=f"x{ax}", rangemode="tozero")
        annotations.append(dict(text=title, x=(lo + hi) / 2, y=1.0, xref="paper", yref="paper",
                                xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=12)))
    data.append(trace("scatter", x=span, y=[1, 1], mode="lines", line=dict(color="grey", dash="dot"), hoverinfo="skip"))
    return figure(data, dict(layout, annotations=annotations))


def expert_drops(record) -> go.Figure:
    """Kept and dropped assignments per expert E_i in one step (the lab's last step)."""
    chosen = np.asarray(_get(record, "chosen_count"), float)  # [E]
    kept = np.asarray(_get(record, "kept_count"), float)  # [E] served by E_i
    x = np.arange(len(chosen))
    share = _get(record, "dropped_share") or 0.0
    data = [trace("bar", x=x, y=kept, name="kept", marker=dict(color=KEPT_COLOR)),
            trace("bar", x=x, y=np.clip(chosen - kept, 0, None), name="dropped", marker=dict(color=DROPPED_COLOR))]
    return figure(data, dict(barmode="stack", width=430, height=330, margin=dict(l=50, r=10, t=60, b=40),
                             title=dict(text=f"Last step: {100 * share:.1f}% of assignments dropped", font=dict(size=13)),
                             xaxis=dict(tickvals=list(x), ticktext=[f"E{e}" for e in x]),
                             yaxis=dict(title=dict(text="assignments")), legend=_LEGEND_ON_TOP))


def alpha_tradeoff(points, note: str = "") -> go.Figure:
    """Final busiest-GPU/fair-share and final task loss against α (log x): too little α and the load
    collapses, too much and the task pays. points: dicts with alpha, busiest_over_fair, task_loss.
    α = 0 has no place on a log axis: it is drawn one decade left of the smallest α > 0, labelled 0."""
    points = sorted(points, key=lambda p: p["alpha"])
    positive = [p["alpha"] for p in points if p["alpha"] > 0] or [1e-3]
    zero_at = min(positive) / 10
    xs = [p["alpha"] if p["alpha"] > 0 else zero_at for p in points]
    ticks = sorted(set(xs))
    text = ["0" if t == zero_at and any(p["alpha"] == 0 for p in points) else f"{t:g}" for t in ticks]
    fig = go.Figure()
    layout = dict(height=300, margin=dict(l=50, r=10, t=70, b=45), showlegend=False, annotations=[],
                  title=dict(text="The α trade-off" + (f"<br><sup>{note}</sup>" if note else ""), font_size=14))
    for i, (field, title, color) in enumerate((("busiest_over_fair", "busiest GPU / fair share (1 = balanced)", "black"),
                                               ("task_loss", "final task loss", "#2ca02c"))):
        ax = "" if i == 0 else "2"
        lo, hi = (0.0, 0.45) if i == 0 else (0.55, 1.0)
        fig.add_trace(go.Scatter(x=xs, y=[p[field] for p in points], mode="lines+markers", name=title,
                                 line=dict(color=color), xaxis=f"x{ax}", yaxis=f"y{ax}"))
        layout[f"xaxis{ax}"] = dict(domain=[lo, hi], type="log", tickvals=ticks, ticktext=text, anchor=f"y{ax}",
                                    title_text="α (aux loss weight)")
        layout[f"yaxis{ax}"] = dict(anchor=f"x{ax}", rangemode="tozero")
        layout["annotations"].append(dict(text=title, x=(lo + hi) / 2, y=1.0, xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False, font_size=12))
    fig.update_layout(layout)
    return fig

"""Which assignments a full buffer drops — the question the priority control answers.

Changing priority from "position" to "score" leaves every count the same (an expert with C free
slots still takes C assignments from each source GPU); it changes *which* assignments get them.
Position priority fills buffers in token order, so the last tokens of a GPU's block drop whatever
their gate; score priority (batch-prioritised routing, Riquelme et al., arXiv 2106.05974) orders
each round by router probability, so the assignments the router was least sure of drop, and
less of the output's gate mass Σ g is lost. This figure shows both views from the recorded tables.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..trace import StepTrace
from .style import DROPPED_COLOR, KEPT_COLOR, figure, title_above, title_margin, trace as plotly_trace, wrap_title

POSITION_BINS = 16
GATE_BINS = 10
EXPLAIN = {
    "position": "position: first choices fill the buffers in token order, then second choices, so the "
                "last tokens of each GPU drop whatever their gate",
    "score": "score: each round fills the buffers by router probability, highest first, so the assignments "
             "the router was least sure of drop",
}


def dropped_gate_share(trace: StepTrace) -> float:
    """Share of the step's gate mass Σ g over all assignments that dropped (0 when none did)."""
    gates = np.asarray(trace.gates, float)  # [P, N, k]
    total = gates[trace.chosen >= 0].sum()
    return float(gates[_dropped(trace)].sum() / total) if total > 0 else 0.0


def _dropped(trace: StepTrace) -> np.ndarray:
    """[P, N, k] chosen but dropped (an expert-choice table's -1 means "not chosen", not dropped)."""
    return (trace.used < 0) & (trace.chosen >= 0)


def dropped_assignments(trace: StepTrace) -> go.Figure:
    """Kept and dropped assignments by token position in the GPU's block (left) and by gate weight
    g (right), with the dropped share of the gate mass in the title."""
    P, N, k = trace.used.shape  # [P, N, k]
    kept, dropped = trace.used >= 0, _dropped(trace)  # [P, N, k] each
    gates = np.asarray(trace.gates, float)
    positions = np.broadcast_to(np.arange(N)[None, :, None], kept.shape)  # [P, N, k] token index
    n_pos = min(POSITION_BINS, N)
    pos_edges = np.linspace(0, N, n_pos + 1)
    gate_edges = np.linspace(0, 1, GATE_BINS + 1)
    pos_mid = (pos_edges[:-1] + pos_edges[1:]) / 2
    gate_mid = (gate_edges[:-1] + gate_edges[1:]) / 2

    def hist(values, edges, mask):
        return np.histogram(values[mask], bins=edges)[0]

    bars = []
    for name, mask, color in (("kept", kept, KEPT_COLOR), ("dropped", dropped, DROPPED_COLOR)):
        bars.append(plotly_trace(
            "bar", x=pos_mid, y=hist(positions, pos_edges, mask), width=float(pos_edges[1] - pos_edges[0]),
            name=f"{name} (by token position)", marker=dict(color=color), legendgroup=name,
            xaxis="x", yaxis="y", hovertemplate="tokens %{x:.0f}±: %{y}<extra>" + name + "</extra>"))
        bars.append(plotly_trace(
            "bar", x=gate_mid, y=hist(np.clip(gates, 0, 1), gate_edges, mask), width=1 / GATE_BINS,
            name=f"{name} (by gate g)", marker=dict(color=color), legendgroup=name, showlegend=False,
            xaxis="x2", yaxis="y2", hovertemplate="g ≈ %{x:.2f}: %{y}<extra>" + name + "</extra>"))
    cfg = trace.extra.get("cfg")
    priority = getattr(cfg, "priority", None)
    n_drop = int(dropped.sum())
    if n_drop:
        lost = dropped_gate_share(trace)
        head = f"Which assignments dropped: {100 * lost:.1f}% of the gate mass Σg"
        sub = (f"mean g of the {n_drop} dropped {gates[dropped].mean():.3f}, of the kept {gates[kept].mean():.3f}. "
               + (EXPLAIN[priority] if priority in EXPLAIN else ""))
    else:
        head = "Which assignments dropped: none"
        sub = "nothing dropped, so the priority decides nothing; lower the capacity factor or raise the skew"
    if priority:
        head += f" (priority = {priority})"
    title = wrap_title(head, sub)
    return figure(bars, dict(  # two panels stacked (not side by side): each keeps the full width when narrow
        barmode="stack", title=title_above(title, 30), height=600, margin=dict(t=title_margin(title, 40), b=90),
        xaxis=dict(title=dict(text="token position on its GPU"), range=[0, N], anchor="y"),
        yaxis=dict(domain=[0.64, 1], title=dict(text="assignments")),
        xaxis2=dict(title=dict(text="gate weight g"), range=[0, 1], anchor="y2"),
        yaxis2=dict(domain=[0, 0.36], anchor="x2", title=dict(text="assignments")),
        legend=dict(orientation="h", y=-0.15, yanchor="top"),
        annotations=[dict(text=text, x=0, y=y, xref="paper", yref="paper", xanchor="left", yanchor="bottom",
                          showarrow=False, font=dict(size=13))
                     for text, y in (("by position in the GPU's block of N tokens", 1.0),
                                     ("by gate weight g of the assignment", 0.36))],
    ))

"""Figures of chapter 6: the routing variants side by side, each a pure function of StepTraces.

    variant_load        rows each GPU's experts received, one bar group per variant
    experts_per_token   how many tokens got 0, 1, 2, ... routed experts, per variant
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..variants import experts_per_token_counts
from .style import gpu_label

VARIANT_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def variant_load(traces: dict) -> go.Figure:
    """Per-GPU load of each variant, as a share of that variant's mean (1 = perfectly balanced):
    variants that move different numbers of rows (fine-grained pieces) compare on one axis."""
    fig = go.Figure()
    for i, (name, tr) in enumerate(traces.items()):
        P = tr.world_size
        mean = max(float(np.mean(tr.recv_tokens)), 1e-9)
        fig.add_bar(x=[gpu_label(r) for r in range(P)], y=(tr.recv_tokens / mean).tolist(), name=name,
                    marker_color=VARIANT_COLORS[i % len(VARIANT_COLORS)],
                    customdata=tr.recv_tokens.tolist(), hovertemplate="%{x}: %{customdata} rows (%{y:.2f}× mean)")
    fig.add_hline(y=1.0, line_dash="dot", line_color="#555", annotation_text="balanced")
    fig.update_layout(barmode="group", height=330, margin=dict(t=50, b=40, l=60, r=10),
                      title="Rows each GPU's experts received, ÷ the variant's mean (max/mean = imbalance)",
                      yaxis_title="load / mean", legend=dict(orientation="h", y=-0.18))
    return fig


def experts_per_token(traces: dict) -> go.Figure:
    """Share of tokens served by 0, 1, 2, ... routed experts (shared experts not counted)."""
    upto = max(int((tr.used >= 0).sum(-1).max()) for tr in traces.values())
    fig = go.Figure()
    for i, (name, tr) in enumerate(traces.items()):
        n = experts_per_token_counts(tr, upto)
        fig.add_bar(x=list(range(upto + 1)), y=(n / n.sum()).tolist(), name=name, customdata=n.tolist(),
                    marker_color=VARIANT_COLORS[i % len(VARIANT_COLORS)],
                    hovertemplate="%{x} experts: %{customdata} tokens (%{y:.1%})")
    fig.update_layout(barmode="group", height=330, margin=dict(t=50, b=40, l=60, r=10),
                      title="Routed experts per token (0 = the token passed through with no routed expert)",
                      xaxis=dict(title="routed experts serving the token", dtick=1), yaxis_title="share of tokens",
                      yaxis_tickformat=".0%", legend=dict(orientation="h", y=-0.25))
    return fig

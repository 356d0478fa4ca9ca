"""Figures for the cost side of the chapter: sparsity (params vs FLOPs) and EP at scale."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..cost import crossover


def sparsity_figure(rows: list[dict]) -> go.Figure:
    """Parameters and FLOPs per token relative to a dense FFN, as E grows, one line per k."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("parameters / dense", "FLOPs per token / dense"))
    for k in sorted({r["k"] for r in rows}):
        rk = [r for r in rows if r["k"] == k]
        E = [r["E"] for r in rk]
        fig.add_trace(go.Scatter(x=E, y=[r["moe_params"] / r["dense_params"] for r in rk], name=f"k={k}",
                                 legendgroup=f"k{k}", mode="lines+markers"), 1, 1)
        fig.add_trace(go.Scatter(x=E, y=[r["moe_flops"] / r["dense_flops"] for r in rk], name=f"k={k}",
                                 legendgroup=f"k{k}", showlegend=False, mode="lines+markers"), 1, 2)
    fig.update_xaxes(title_text="experts E", type="log", dtick=0.30103)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title="Sparsity: parameters grow with E, compute grows with k", height=360)
    return fig


def scaling_figure(rows: list[dict], title: str = "Expert parallelism at scale (cost model, not measurement)") -> go.Figure:
    """Per layer and GPU as the EP group grows (from cost.scaling_table): the two AlltoAlls of a
    forward (dispatch + combine, with their bandwidth-only part) against the expert compute they
    must hide behind, and expert memory with EP vs DP alone."""
    P = [r["P"] for r in rows]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("forward time per layer (ms)", "expert weights per GPU per layer (GB)"))
    fig.add_trace(go.Scatter(x=P, y=[2e3 * r["alltoall_s"] for r in rows], name="dispatch + combine",
                             mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=P, y=[2e3 * r["alltoall_bw_s"] for r in rows], name="… bandwidth term only",
                             mode="lines", line=dict(dash="dot")), 1, 1)
    fig.add_trace(go.Scatter(x=P, y=[1e3 * r["expert_s"] for r in rows], name="expert compute",
                             mode="lines", line=dict(color="black")), 1, 1)
    cross = next((r for r in rows if r["P"] == crossover(rows)), None)
    if cross is not None:  # where the AlltoAlls stop hiding behind the matmuls
        fig.add_trace(go.Scatter(x=[cross["P"]], y=[2e3 * cross["alltoall_s"]], mode="markers+text",
                                 marker=dict(size=14, symbol="circle-open", color="red"), name="crossover",
                                 text=[f"P = {cross['P']}"], textposition="top left"), 1, 1)
    fig.add_trace(go.Scatter(x=P, y=[r["expert_mem_ep"] / 1e9 for r in rows], name="EP: E/P experts", mode="lines+markers"), 1, 2)
    fig.add_trace(go.Scatter(x=P, y=[r["expert_mem_dp"] / 1e9 for r in rows], name="DP only: all E", mode="lines+markers"), 1, 2)
    fig.update_xaxes(title_text="GPUs in the EP group (P)", type="log", dtick=0.30103)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title=title, height=380, legend=dict(orientation="h", y=-0.25))
    return fig

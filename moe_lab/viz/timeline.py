"""The network chapter's figures: a per-rank timeline of one step, and bytes / messages per link type.

Both are pure functions of StepTraces. The timeline is drawn from timestamps taken on the ranks
(moe_lab.links): per rank, the compute phases (router, experts) as bars, the time the rank sat
blocked waiting on a collective ("waiting", emulated link time included) as red bars, and below them,
thin, the collectives in flight (issued, not yet done). Overlap shows up as in-flight bars under
expert bars; exposed communication as waiting bars.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import DROPPED_COLOR, PHASE_COLORS, gpu_label

_IN_FLIGHT = dict(dispatch=PHASE_COLORS["dispatch"], combine=PHASE_COLORS["combine"])


def _comm_kind(phase: str) -> str:
    for name in ("counts", "dispatch", "combine"):
        if name in phase:
            return "count_exchange" if name == "counts" else name
    return "other"


def timeline(trace, title: str = "") -> go.Figure:
    """One row per rank: compute bars, waiting bars and in-flight collectives over time (ms)."""
    bars = {}  # legend entry -> (x base, width, y, chunk labels)

    def add(key, rank, y_off, e):
        b = bars.setdefault(key, ([], [], [], []))
        b[0].append(1e3 * e["start"])
        b[1].append(1e3 * (e["end"] - e["start"]))
        b[2].append(rank + y_off)
        b[3].append("" if e["chunk"] is None else f"chunk {e['chunk']}")

    for e in trace.timeline:
        if e["kind"] == "compute":
            add(e["phase"], e["rank"], 0.0, e)
        elif e["kind"] == "wait" and e["end"] - e["start"] > 0:
            add("waiting on a collective", e["rank"], 0.0, e)
        elif e["kind"] == "comm":
            add(f"{_comm_kind(e['phase'])} in flight", e["rank"], 0.33, e)
    fig = go.Figure()
    for key, (x0, width, y, text) in bars.items():
        in_flight = key.endswith("in flight")
        color = DROPPED_COLOR if key.startswith("waiting") else PHASE_COLORS.get(key.split(" ")[0], PHASE_COLORS["other"])
        fig.add_trace(go.Bar(x=width, base=x0, y=y, orientation="h", name=key, text=text, textposition="none",
                             width=0.12 if in_flight else 0.45, marker_color=color,
                             opacity=0.55 if in_flight else 1.0,
                             hovertemplate="%{text} %{base:.2f}–%{x:.2f} ms<extra>" + key + "</extra>"))
    W = trace.world_size
    link = trace.extra.get("inter_node")
    label = f" — {link}" if link is not None else " — real links only (no emulated link)"
    fig.update_layout(barmode="overlay", height=120 + 38 * W, bargap=0.1,
                      title=(title or "Timeline of one step, per rank (timestamps taken on the ranks)") + label,
                      xaxis_title="time since the first rank started the step (ms)",
                      legend=dict(orientation="h", y=-0.25))
    fig.update_yaxes(tickvals=list(range(W)), ticktext=[f"{gpu_label(r)} · node {r // (W // trace.nodes)}" for r in range(W)],
                     autorange="reversed")
    return fig


def link_traffic(traces: dict) -> go.Figure:
    """Bytes and messages each variant sent per link type (summed over ranks), side by side.

    traces: label -> StepTrace (the same tokens, one per variant).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("bytes sent (KiB, all ranks)", "messages sent (all ranks)"))
    labels = list(traces)
    for kind, color in (("intra", PHASE_COLORS["experts"]), ("inter", DROPPED_COLOR)):
        name = "intra-node" if kind == "intra" else "inter-node"
        fig.add_trace(go.Bar(x=labels, y=[float(t.link_bytes[kind].sum()) / 1024 for t in traces.values()],
                             name=name, marker_color=color, legendgroup=kind), 1, 1)
        fig.add_trace(go.Bar(x=labels, y=[int(t.link_messages[kind].sum()) for t in traces.values()],
                             name=name, marker_color=color, legendgroup=kind, showlegend=False), 1, 2)
    fig.update_layout(barmode="group", height=360, title="What crosses which link (forward AlltoAlls, count exchange included)")
    return fig

"""The chapter's Question, drawn: "a token is routed to experts on GPUs 3 and 7 — how does it get
there and back?"

The P GPUs sit on a circle. For each of the token's k copies a solid arrow is the dispatch
AlltoAll (home GPU → the GPU holding the expert, into a slot of that expert's buffer) and a dashed
arrow is the combine AlltoAll (the expert's output back to the token's row, weighted by its gate).
A copy dropped over capacity never leaves: it is a red cross at home and contributes zero.
Everything comes from `StepTrace.token_path`; nothing is recomputed.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from ..trace import StepTrace
from .style import DROPPED_COLOR, expert_colors, gpu_label, title_above, title_margin, wrap_title


def describe_token_path(trace: StepTrace, rank: int, token: int) -> str:
    """The token's trip in words, one line per choice, ending with y = Σ g_i · E_i(x)."""
    path = trace.hops(rank, token)
    lines = [f"Token {token} on GPU {rank} (k = {trace.k}):"]
    terms = []
    for hop in path:
        head = f"  choice {hop['j']}: chose E{hop['chosen']} (gate {hop['gate']:.3f})"
        if hop["dropped"]:
            cap = "" if trace.capacity is None else f" (C = {trace.capacity} slots from GPU {rank} already full)"
            lines.append(f"{head} -> dropped{cap}, contributes 0")
            continue
        e, dst = hop["expert"], hop["expert_rank"]
        moved = "" if e == hop["chosen"] else f", overflowed to E{e} (E{hop['chosen']} was full)"
        where = "stays on GPU {}".format(dst) if dst == rank else f"dispatch to GPU {dst}"
        lines.append(f"{head}{moved} -> {where}: slot {hop['slot']} of E{e}'s buffer "
                     f"(send row {hop['send_row']} -> receive row {hop['recv_row']}) "
                     f"-> combine back to GPU {rank}, weighted by {hop['gate']:.3f}")
        terms.append(f"{hop['gate']:.3f}·E{e}(x)")
    lines.append("  y = " + (" + ".join(terms) if terms else "0 (every copy dropped: the token passes through)"))
    return "\n".join(lines)


def token_path(trace: StepTrace, rank: int, token: int) -> go.Figure:
    """One token's trip from its home GPU to the GPUs holding its experts and back."""

    P, m = trace.world_size, trace.experts_per_rank
    path = trace.hops(rank, token)
    colors = expert_colors(trace.num_experts)
    pos = _circle(P)  # [P, 2]
    targets = {hop["expert_rank"] for hop in path if not hop["dropped"]}
    node_color = ["gold" if r == rank else ("#444" if r in targets else "#d0d0d0") for r in range(P)]
    fig = go.Figure(go.Scatter(
        x=pos[:, 0], y=pos[:, 1], mode="markers+text", name="GPUs",
        text=[f"{gpu_label(r)}<br>E{r * m}" + (f"-E{r * m + m - 1}" if m > 1 else "") for r in range(P)],
        textposition=[_outside(pos[r]) for r in range(P)],
        marker=dict(size=34, color=node_color, line=dict(color="black", width=1), symbol="square"),
        hovertext=[("home of the token; " if r == rank else "") + f"holds E{r * m}..E{r * m + m - 1}"
                   for r in range(P)], hoverinfo="text",
    ))
    annotations = []
    for hop in path:
        if hop["dropped"]:
            p = _beside(pos[rank], -(0.3 + 0.16 * hop["j"]))  # the other side from local loops
            fig.add_trace(go.Scatter(
                x=[p[0]], y=[p[1]], mode="markers+text", name=f"choice {hop['j']}: E{hop['chosen']} dropped",
                marker=dict(symbol="x", size=16, color=DROPPED_COLOR), text=[f"E{hop['chosen']} dropped"],
                textposition="bottom center", textfont=dict(color=DROPPED_COLOR)))
            continue
        e, dst, c = hop["expert"], hop["expert_rank"], colors[hop["expert"]]
        label = f"E{e} slot {hop['slot']}"
        for kind, a, b, bend, dash in (("dispatch", rank, dst, 0.25, "solid"), ("combine", dst, rank, 0.25, "dash")):
            xy = _loop(pos[a], hop["j"]) if a == b else _arc(pos[a], pos[b], bend)
            if a == b and kind == "combine":
                continue  # a local copy: one loop stands for both (no network hop)
            name = (f"{kind}: choice {hop['j']} → {label} on GPU {dst}" if kind == "dispatch"
                    else f"combine: E{e} output × g = {hop['gate']:.3f} back to GPU {rank}")
            fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines", name=name, hoverinfo="name",
                                     line=dict(color=c, width=3 if kind == "dispatch" else 2, dash=dash)))
            annotations.append(dict(x=xy[-1, 0], y=xy[-1, 1], ax=xy[-4, 0], ay=xy[-4, 1], xref="x", yref="y",
                                    axref="x", ayref="y", showarrow=True, arrowhead=3, arrowsize=1.3,
                                    arrowcolor=c, text=""))
            mid = xy[len(xy) // 2]
            if a == b:  # label beyond the loop, on the line from the node through it
                mid = pos[a] + 1.9 * (mid - pos[a])
            text = (f"{label}" + (f" (local, × g={hop['gate']:.3f})" if a == b else "") if kind == "dispatch"
                    else f"× g={hop['gate']:.3f}")
            annotations.append(dict(x=mid[0], y=mid[1], text=text, showarrow=False, font=dict(color=c, size=12),
                                    bgcolor="rgba(255,255,255,0.8)"))
    title = _title(trace, rank, token, path)
    fig.update_layout(
        title=title_above(title), annotations=annotations, showlegend=True,
        xaxis=dict(visible=False, range=[-1.6, 1.6]), yaxis=dict(visible=False, range=[-1.5, 1.5],
                                                                  scaleanchor="x"),
        height=720, margin=dict(l=10, r=10, t=title_margin(title), b=110), plot_bgcolor="white",
        legend=dict(orientation="h", x=0, y=0, yanchor="top", font=dict(size=11)),
    )
    return fig


def _title(trace: StepTrace, rank: int, token: int, path: list[dict]) -> str:
    """Each expert GPU named once, in GPU order, with the experts it serves for this token beside it
    ("GPU 0 (E1) and GPU 1 (E2, E3)"): a GPU list and an expert list in two orders would pair wrongly."""
    kept = [hop for hop in path if not hop["dropped"]]
    n_drop = len(path) - len(kept)
    if not kept:
        return wrap_title(f"Token {token} of GPU {rank}: all {len(path)} copies dropped, its output is zero",
                          width=70)
    served: dict[int, list[int]] = {}
    for hop in sorted(kept, key=lambda h: h["expert"]):
        served.setdefault(hop["expert_rank"], []).append(hop["expert"])
    where = " and ".join(f"GPU {g} ({', '.join(f'E{e}' for e in served[g])})" for g in sorted(served))
    drop = f"; {n_drop} cop{'y' if n_drop == 1 else 'ies'} dropped" if n_drop else ""
    return wrap_title(f"Token {token} of GPU {rank} → {where} → back to GPU {rank}{drop}",
                      "solid: dispatch AlltoAll; dashed: combine AlltoAll (the transpose)", width=70)


def _circle(P: int) -> np.ndarray:
    """GPU r at the clock position r of P, GPU 0 on top, clockwise. [P, 2]"""
    if P == 1:
        return np.zeros((1, 2))
    a = math.pi / 2 - 2 * math.pi * np.arange(P) / P
    return np.stack([np.cos(a), np.sin(a)], 1)


def _arc(p: np.ndarray, q: np.ndarray, bend: float, n: int = 24) -> np.ndarray:
    """A quadratic curve p → q bowed to the left of travel, so q → p bows the other way. [n, 2]"""
    d = q - p
    normal = np.array([-d[1], d[0]])
    ctrl = (p + q) / 2 + bend * normal
    t = np.linspace(0.08, 0.92, n)[:, None]  # stop short of the node markers
    return (1 - t) ** 2 * p + 2 * (1 - t) * t * ctrl + t**2 * q


def _beside(p: np.ndarray, d: float) -> np.ndarray:
    """A point d along the clockwise tangent of the circle at GPU position p (d < 0: anticlockwise)."""
    norm = np.linalg.norm(p)
    out = p / norm if norm else np.array([0.0, 1.0])
    return p + d * np.array([out[1], -out[0]])


def _loop(p: np.ndarray, j: int, n: int = 28) -> np.ndarray:
    """A small loop beside a GPU, off to its side (clear of its label and of the arcs): the copy
    stays local because its expert lives on the token's home GPU. [n, 2]"""
    norm = np.linalg.norm(p)
    out = p / norm if norm else np.array([0.0, 1.0])
    side = np.array([out[1], -out[0]])  # clockwise tangent of the circle
    center = _beside(p, 0.24 + 0.06 * j)
    r = 0.1 + 0.03 * j
    start = math.atan2(-side[1], -side[0])  # begin and end at the node's side of the loop
    a = np.linspace(start + 0.5, start + 2 * math.pi - 0.5, n)
    return center + r * np.stack([np.cos(a), np.sin(a)], 1)


def _outside(p: np.ndarray) -> str:
    if abs(p[0]) < 0.3:
        return "top center" if p[1] >= 0 else "bottom center"
    return "middle right" if p[0] > 0 else "middle left"

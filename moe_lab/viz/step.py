"""Figures of one step: each a pure function `StepTrace -> plotly Figure` answering one question.

Nothing here starts a process or touches torch: a figure only reads the arrays a step recorded
(see `trace.py`), so the same trace can be drawn again and again, in a notebook or a test.
Words follow the chapter: P GPUs (ranks), experts E_i, capacity C, tokens N per GPU, k choices.

    alltoall_buffers   what sits in every GPU's send buffer before dispatch and receive buffer after?
    traffic_matrix     how many token copies does GPU i send GPU j?
    per_gpu_load       how many tokens land on each GPU, against the capacity?
    dropped_tokens     which experts dropped tokens, and what share of all assignments?
    stragglers         which GPU is slowest, and in which phase? (the step waits for it)
    dispatch_bytes     how many bytes would each buffer layout move for this routing?
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sequential

from ..trace import PHASES, StepTrace
from .style import (DROPPED_COLOR, HOVER_CELL_LIMIT, KEPT_COLOR, PADDING_COLOR, PHASE_COLORS, expert_colors, figure,
                    gpu_label, title_above, title_margin, trace as plotly_trace, wrap_title)

WIDE_TITLE = 70  # characters per title line of a figure drawn at full width

# ---- AlltoAll buffers ------------------------------------------------------------------------

BUFFER_ROWS = ("send (before dispatch)", "receive (after dispatch)", "dropped (never sent)")


BLUES = [[i / 8, c] for i, c in enumerate(sequential.Blues)]  # plotly's "Blues", spelled out as validation would
EMPTY = -2  # colour value of a heatmap cell past the end of a buffer (transparent)


def alltoall_buffers(trace: StepTrace) -> go.Figure:
    """One panel per GPU: its send buffer (chunks by destination GPU), its receive buffer (chunks
    by source GPU) and the assignments it dropped, one cell per buffer row coloured by expert.

    This is the chapter's "Before AlltoAll / After AlltoAll" picture, with real slots: a cell of
    value e is a token copy for expert E_e, -1 (grey) a padding row that travels but carries
    nothing. One heatmap per panel keeps the figure at P traces however many tokens there are.
    """
    P, E = trace.world_size, trace.num_experts
    rows = [_buffer_values(trace, r) for r in range(P)]  # per rank: send, its owners, recv, its owners, dropped
    width = max(1, max(max(len(send), len(recv), len(drop)) for send, _, recv, _, drop in rows))
    hover = P * len(BUFFER_ROWS) * width <= HOVER_CELL_LIMIT  # per-cell text only where it stays cheap
    titles = []
    for r in range(P):
        real = f" ({int(trace.recv_tokens[r])} real)" if trace.buffer_slots is not None else ""
        titles.append(f"{gpu_label(r)}: sends {int(trace.send_rows[r])} rows, receives {int(trace.recv_rows[r])}"
                      f"{real}, dropped {len(rows[r][4])}")
    layout = _stacked_panels(titles, spacing=min(0.04, 0.3 / P))  # one panel per GPU, shared x
    heatmaps, shapes = [], []  # chunk boundaries, set once: add_shape per line is slow
    for r, (send, send_to, recv, recv_from, drop) in enumerate(rows):
        # [3, width] float (object arrays are deep-copied cell by cell on every redraw); EMPTY = past
        # the end of that buffer, drawn blank (not NaN: widget messages are strict JSON)
        z = np.full((len(BUFFER_ROWS), width), EMPTY, float)
        for i, values in enumerate((send, recv, drop)):
            z[i, : len(values)] = values
        text = None
        if hover:
            text = np.full(z.shape, "", object)
            for i, labels in enumerate(_buffer_hover(trace, r)):
                text[i, : len(labels)] = labels
        ax = "" if r == 0 else str(r + 1)
        heatmaps.append(plotly_trace(
            "heatmap", z=z, y=list(BUFFER_ROWS), x=np.arange(width), coloraxis="coloraxis", name=gpu_label(r),
            text=text, hovertemplate="%{text}<extra>" + gpu_label(r) + "</extra>" if hover else None,
            hoverinfo=None if hover else "x+y+z", xgap=0, ygap=2, xaxis="x" + ax, yaxis="y" + ax,
        ))
        shapes += _chunk_lines(send_to, recv_from, "x" + ax, "y" + ax)
    mode = "padded" if trace.buffer_slots is not None else "ragged"
    cap = "dropless" if trace.capacity is None else f"capacity C = {trace.capacity} per expert per source GPU"
    title = wrap_title(
        f"AlltoAll buffers on {P} GPUs ({mode}, {cap})",
        f"each GPU sends tokens for E0..E{E - 1}, chunked by destination GPU, and receives only tokens for "
        f"its own experts, chunked by source GPU"
        f"{'; grey rows are padding: sent, but wasted' if trace.buffer_slots is not None else ''}",
        width=WIDE_TITLE)
    layout.update(
        title=title_above(title, 32), coloraxis=_expert_colorscale(E), shapes=shapes, height=150 + 135 * P,
        margin=dict(l=10, r=10, t=title_margin(title, 50), b=40), showlegend=False,
    )
    return figure(heatmaps, layout)


def _stacked_panels(titles: list[str], spacing: float) -> dict:
    """Layout of len(titles) panels stacked top to bottom with a shared x axis, built in one go
    (make_subplots does the same through many small validated updates: half of a redraw)."""
    n = len(titles)
    h = (1 - spacing * (n - 1)) / n  # height of one panel, in paper coordinates
    layout, notes = {}, []
    for r, title in enumerate(titles):
        ax = "" if r == 0 else str(r + 1)
        top = 1 - r * (h + spacing)
        layout["xaxis" + ax] = dict(anchor="y" + ax, showticklabels=r == n - 1)
        if r:
            layout["xaxis" + ax]["matches"] = "x"
        if r == n - 1:
            layout["xaxis" + ax]["title"] = dict(text="buffer row")
        layout["yaxis" + ax] = dict(anchor="x" + ax, domain=[max(0.0, top - h), min(1.0, top)], autorange="reversed")
        notes.append(dict(text=title, x=0.5, y=top, xref="paper", yref="paper", xanchor="center",
                          yanchor="bottom", showarrow=False, font=dict(size=16)))
    layout["annotations"] = notes
    return layout


def _buffer_values(trace: StepTrace, r: int) -> tuple[np.ndarray, ...]:
    """Rank r's buffers as colour values, computed from the kept counts (no per-row Python: at 8 GPUs
    x 512 tokens the rows were most of a redraw). A value is the row's expert e, -1 a padding row.

    Returns send [rows] and the GPU each row goes to, recv [rows] and the GPU each came from, and
    the experts of r's dropped assignments (token order, then choice) — the order trace.send_buffer /
    trace.recv_buffer lay the rows out in (tests/test_viz.py checks it cell by cell).
    """
    P, E, m, S = trace.world_size, trace.num_experts, trace.experts_per_rank, trace.buffer_slots
    kept = np.stack([np.bincount(u[u >= 0], minlength=E) for u in trace.used.reshape(P, -1)])  # [P, E] rows kept
    send, send_n = _rows(np.arange(E), kept[r], S)
    local = np.arange(r * m, (r + 1) * m)
    recv, recv_n = _rows(np.tile(local, P), kept[:, local].reshape(-1), S)  # by source GPU, then local expert
    drop = trace.chosen[r][np.nonzero(trace.dropped_at(r))]
    return send, np.repeat(np.arange(E) // m, send_n), recv, np.repeat(np.repeat(np.arange(P), m), recv_n), drop


def _rows(experts: np.ndarray, counts: np.ndarray, slots: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of rows, one per entry of `experts`: `counts` rows of that expert, then (padded layout,
    `slots` rows a block) padding (-1). Returns the row values and each block's length."""
    n = counts if slots is None else np.full_like(counts, slots)
    values = np.repeat(experts, n)
    if slots is not None:
        position = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # row index inside its block
        values = np.where(position < np.repeat(counts, n), values, -1)
    return values, n


def _buffer_hover(trace: StepTrace, r: int) -> list[list[str]]:
    """Hover text of rank r's send rows, receive rows and dropped assignments (small steps only)."""
    send = [f"token {t} (choice {j}) → {gpu_label(d)}, E{e} slot {s}" if t is not None
            else f"padding → {gpu_label(d)}, E{e} slot {s} (wasted)" for d, e, s, t, j in trace.send_buffer(r)]
    recv = [f"from {gpu_label(src)}: token {t} (choice {j}), E{e} slot {s}" if t is not None
            else f"padding from {gpu_label(src)}, E{e} slot {s} (wasted)" for src, e, s, t, j in trace.recv_buffer(r)]
    t_d, j_d = np.nonzero(trace.dropped_at(r))
    wanted = trace.chosen[r][t_d, j_d].tolist()
    drop = [f"token {t} (choice {j}) wanted E{e}: dropped, contributes 0"
            for t, j, e in zip(t_d.tolist(), j_d.tolist(), wanted)]
    return [send, recv, drop]


def _chunk_lines(send_to: np.ndarray, recv_from: np.ndarray, xref: str, yref: str) -> list[dict]:
    """White lines between destination chunks (send) and source chunks (receive) of one rank."""
    path = ""  # one SVG path per panel: a shape per line makes every redraw slow
    for y, owners in ((0, send_to), (1, recv_from)):
        for c in np.flatnonzero(owners[1:] != owners[:-1]) + 1:
            path += f"M{c - 0.5},{y - 0.45}L{c - 0.5},{y + 0.45}"
    return [dict(type="path", path=path, xref=xref, yref=yref, line=dict(color="white", width=2))] if path else []


def _expert_colorscale(E: int) -> dict:
    """A stepped colour scale: value -1 is padding (grey), value e is expert E_e's colour."""
    colors = ["rgba(0,0,0,0)", PADDING_COLOR] + expert_colors(E)  # EMPTY (-2), padding (-1), E0..
    n = len(colors)
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return dict(colorscale=scale, cmin=EMPTY - 0.5, cmax=E - 0.5, colorbar=dict(
        title=dict(text="expert"), tickvals=list(range(-1, E)), ticktext=["padding"] + [f"E{e}" for e in range(E)]))


# ---- traffic, load, drops --------------------------------------------------------------------

def traffic_matrix(trace: StepTrace) -> go.Figure:
    """The [P, P] dispatch matrix: token copies GPU i sends GPU j. Combine sends them back (the
    transpose). The diagonal stays on its GPU; everything else crosses the network."""
    P = trace.world_size
    z = np.asarray(trace.send_counts)  # [P src, P dst]
    text = [[f"{gpu_label(i)} → {gpu_label(j)}: {z[i, j]} token copies" + (" (stays local)" if i == j else "")
             for j in range(P)] for i in range(P)]
    labels = [gpu_label(r) for r in range(P)]
    mb = float(np.sum(trace.bytes_sent)) / 1e6
    heatmap = plotly_trace("heatmap", z=z, x=labels, y=labels, colorscale=BLUES, texttemplate="%{z}", text=text,
                           hovertemplate="%{text}<extra></extra>", colorbar=dict(title=dict(text="tokens")))
    title = wrap_title("Dispatch AlltoAll: tokens GPU i sends GPU j",
                       f"{int(z.sum())} copies, {mb:.2f} MB on the wire"
                       f"{' with padding' if trace.buffer_slots is not None else ''}; combine sends every copy "
                       f"back: its matrix is the transpose")
    return figure([heatmap], dict(  # no fixed width: the figure takes its output's width (autosize)
        title=title_above(title), xaxis=dict(title=dict(text="to GPU j (holds the chosen expert)")),
        yaxis=dict(title=dict(text="from GPU i (the token's home)"), autorange="reversed"),
        height=200 + 45 * P, margin=dict(t=title_margin(title)),
    ))


def per_gpu_load(trace: StepTrace) -> go.Figure:
    """Tokens each GPU's experts receive, with the ones dropped before reaching them on top, against
    the capacity: the chapter's "that GPU is overloaded while others idle"."""
    P, m = trace.world_size, trace.experts_per_rank
    x = np.arange(P)
    dropped = np.asarray(trace.dropped).reshape(P, m).sum(1)  # [P] dropped copies that wanted this GPU
    mean = float(np.mean(trace.recv_tokens))
    traces = [
        plotly_trace("bar", x=x, y=np.asarray(trace.recv_tokens), name="received", marker=dict(color=KEPT_COLOR)),
        plotly_trace("bar", x=x, y=dropped, name="dropped (wanted this GPU)", marker=dict(color=DROPPED_COLOR)),
        plotly_trace("scatter", x=[-0.5, P - 0.5], y=[mean, mean], mode="lines", name=f"mean {mean:.0f}",
                     line=dict(color="black", dash="dot")),
    ]
    sub = "dropless: no capacity limit"
    if trace.capacity is not None:
        limit = trace.capacity * m * P  # C slots × m local experts × P source GPUs
        traces.append(plotly_trace("scatter", x=[-0.5, P - 0.5], y=[limit, limit], mode="lines",
                                   name=f"capacity {limit}", line=dict(color=DROPPED_COLOR, dash="dash")))
        sub = (f"capacity = C·m·P = {trace.capacity}·{m}·{P} = {limit} per GPU (C slots per expert from each "
               f"source GPU, m experts per GPU, P source GPUs)")
    title = wrap_title(f"Tokens per GPU: max/mean = {trace.load_imbalance:.2f}", sub)
    return figure(traces, dict(
        barmode="stack", title=title_above(title),
        xaxis=dict(title=dict(text="GPU (experts it holds)"), tickvals=x.tolist(),
                   ticktext=[f"{r}<br>E{r * m}" + (f"-E{r * m + m - 1}" if m > 1 else "") for r in x]),
        yaxis=dict(title=dict(text="token copies received")), legend=dict(orientation="h", y=-0.3, yanchor="top"),
        height=500, margin=dict(t=title_margin(title), b=130),
    ))


def dropped_tokens(trace: StepTrace) -> go.Figure:
    """Kept and dropped assignments per expert E_i, and the dropped share of all P·N·k."""
    E = trace.num_experts
    x = np.arange(E)
    traces = [
        plotly_trace("bar", x=x, y=np.asarray(trace.kept), name="kept (served by E_i)", marker=dict(color=KEPT_COLOR)),
        plotly_trace("bar", x=x, y=np.asarray(trace.dropped), name="dropped (chose E_i, over capacity)",
                     marker=dict(color=DROPPED_COLOR)),
    ]
    if trace.capacity is not None:
        limit = trace.capacity * trace.world_size  # C slots from each of the P source GPUs
        traces.append(plotly_trace("scatter", x=[-0.5, E - 0.5], y=[limit, limit], mode="lines",
                                   name=f"C·P = {limit}", line=dict(color=DROPPED_COLOR, dash="dash")))
    share = trace.dropped_share
    total = trace.assignments
    sub = ("dropless" if trace.capacity is None else f"capacity C = {trace.capacity} per expert per GPU")
    title = wrap_title(f"Dropped: {100 * share:.1f}% of the P·N·k = {total} assignments "
                       f"({int(np.sum(trace.dropped))} dropped)", sub)
    return figure(traces, dict(
        barmode="stack", title=title_above(title),
        xaxis=dict(title=dict(text="expert"), tickvals=x.tolist(), ticktext=[f"E{e}" for e in x]),
        yaxis=dict(title=dict(text="assignments (token copies)")), legend=dict(orientation="h", y=-0.2, yanchor="top"),
        height=440, margin=dict(t=title_margin(title), b=100),
    ))


def stragglers(trace: StepTrace) -> go.Figure:
    """Each GPU's time split by phase, and the step time: every GPU waits in the AlltoAll for the
    slowest, so the step takes max over GPUs, not the mean."""
    P = trace.world_size
    x = np.arange(P)
    ms = {ph: 1e3 * np.asarray(trace.phase_time_s.get(ph, np.zeros(P)), float) for ph in PHASES}  # [P] each
    total = 1e3 * np.asarray(trace.rank_time_s, float)  # [P]
    phase_sum = sum(ms.values())
    other = np.clip(total - phase_sum, 0.0, None)
    bars = [go.Bar(x=x, y=ms[ph], name=ph.replace("_", " "), marker_color=PHASE_COLORS[ph]) for ph in PHASES]
    if np.any(other > 1e-9):
        bars.append(go.Bar(x=x, y=other, name="other", marker_color=PHASE_COLORS["other"]))
    fig = go.Figure(bars)
    per_rank = np.maximum(total, phase_sum)
    step = float(per_rank.max()) if P else 0.0
    slow = int(np.argmax(per_rank)) if P else 0
    fig.add_trace(go.Scatter(x=[-0.5, P - 0.5], y=[step, step], mode="lines", name=f"step time {step:.2f} ms",
                             line=dict(color="black", dash="dash")))
    title = wrap_title(f"The step waits for the slowest GPU: {gpu_label(slow)} takes {step:.2f} ms "
                       f"(mean {float(per_rank.mean()):.2f} ms)", width=WIDE_TITLE)
    fig.update_layout(
        barmode="stack", title=title_above(title),
        xaxis=dict(title="GPU", tickvals=list(x), ticktext=[gpu_label(r) for r in x]),
        yaxis_title="time (ms)", legend=dict(orientation="h", y=-0.2, yanchor="top"),
        margin=dict(t=title_margin(title), b=100),
    )
    return fig



__all__ = ["alltoall_buffers", "traffic_matrix", "per_gpu_load", "dropped_tokens", "stragglers", "token_path",
           "describe_token_path", "training_curves", "compare_runs", "record_from_trace", "HISTORY_FIELDS",
           "expert_colors", "gpu_label"]


def expert_time_vs_rows(traces) -> go.Figure:
    """Each GPU's expert time against the rows its experts received, median over several steps:
    with experts big enough to dominate, time grows with rows, and the busiest GPU sets the step."""
    traces = list(traces)
    P = traces[0].world_size
    rows = np.median([np.asarray(t.recv_tokens, float) for t in traces], axis=0)  # [P]
    ms = 1e3 * np.median([np.asarray(t.phase_time_s["experts"], float) for t in traces], axis=0)  # [P]
    fig = go.Figure(go.Scatter(x=rows, y=ms, mode="markers+text", text=[gpu_label(r) for r in range(P)],
                               textposition="top center", marker=dict(size=10, color=KEPT_COLOR), name="GPU"))
    slope = float(ms.max() / rows.max()) if rows.max() > 0 else 0.0
    fig.add_trace(go.Scatter(x=[0, rows.max()], y=[0, slope * rows.max()], mode="lines", name="time ∝ rows",
                             line=dict(color="grey", dash="dot")))
    busiest = int(np.argmax(ms))
    fig.update_layout(
        title=f"Expert time grows with the rows received: {gpu_label(busiest)} takes {ms[busiest]:.0f} ms, "
              f"the median GPU {float(np.median(ms)):.0f} ms<br><sup>median of {len(traces)} steps; every GPU waits "
              "for the slowest in the combine AlltoAll</sup>",
        xaxis_title="token copies received (rows)", yaxis_title="expert time (ms)", showlegend=False,
        height=380, margin=dict(t=80))
    return fig


def dispatch_bytes(trace: StepTrace) -> dict:
    """Bytes one dispatch AlltoAll moves over all GPUs in each layout, from the same routing:
    ragged sends only the kept rows; padded sends E·S rows from every GPU (S = C, or N when dropless),
    used or not. {"ragged": bytes, "padded": bytes, "shown": the layout this step used}."""
    P, E, N = trace.world_size, trace.num_experts, trace.tokens_per_rank
    rows = int(np.sum(trace.send_rows))
    row_bytes = float(np.sum(trace.bytes_sent)) / rows if rows else trace.d_model * 4  # d · bytes per element
    slots = trace.buffer_slots if trace.buffer_slots is not None else (trace.capacity or N)
    return dict(ragged=int(round(int(np.sum(trace.kept)) * row_bytes)), padded=int(round(P * E * slots * row_bytes)),
                shown="padded" if trace.buffer_slots is not None else "ragged")

"""The course's colours, labels and title layout, in one place: every figure family imports them from here."""
from __future__ import annotations

import functools
import textwrap

import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

PADDING_COLOR = "#c9c9c9"  # wasted rows of a padded buffer
DROPPED_COLOR = "#d62728"
KEPT_COLOR = "#1f77b4"
PHASE_COLORS = dict(router="#9467bd", count_exchange="#bcbd22", dispatch="#ff7f0e", experts="#2ca02c",
                    combine="#17becf", other="#c9c9c9")
HOVER_CELL_LIMIT = 12_000  # per-cell hover text above this costs more to redraw than it helps

# Title widths in characters. Plotly never wraps a title: a line wider than the figure is cut at
# both edges. A figure may be drawn half-width beside another in a 1280-px JupyterLab with the
# file browser open (≈ 420 px of plot): ≈ 44 title characters (17 px) and ≈ 64 subtitle ones fit.
TITLE_CHARS = 44
SUBTITLE_CHARS = 64


def gpu_label(r: int) -> str:
    return f"GPU {r}"


def expert_colors(num_experts: int) -> list[str]:
    """One colour per expert E_i, the same in every figure of the course."""
    palette = qualitative.Plotly if num_experts <= 10 else qualitative.Alphabet
    return [palette[i % len(palette)] for i in range(num_experts)]


def wrap_title(title: str, sub: str = "", width: int = TITLE_CHARS, sub_width: int | None = None) -> str:
    """A title (and a smaller subtitle) broken into lines of at most `width` characters with <br>,
    so it fits the narrowest place the figure is shown instead of being cut at its edges."""
    lines = textwrap.wrap(title, width, break_long_words=False)
    if sub:
        sub_lines = textwrap.wrap(sub, sub_width or int(width * SUBTITLE_CHARS / TITLE_CHARS), break_long_words=False)
        lines += [f"<sup>{line}</sup>" for line in sub_lines]  # one tag per line: plotly styles line by line
    return "<br>".join(lines)


def title_margin(title: str, base: int = 30) -> int:
    """Top margin that holds every line of a wrapped title (see `title_above`) and `base` px more
    between its last line and the plot (room for panel titles there, too)."""
    return base + 20 + 24 * (title.count("<br>") + 1)


def title_above(title: str, gap: int = 10) -> dict:
    """The title hung from the top of the figure, its lines flowing down into a top margin of
    `title_margin(title)`: a title centred in the margin would spill into the plot when it wraps.
    (`gap` is kept for callers; the margin's `base` sets the room below the title.)"""
    return dict(text=title, yref="container", y=1, yanchor="top", pad=dict(t=26))  # plotly anchors the first line


def figure(data: list[dict], layout: dict) -> go.Figure:
    """A figure from plain trace and layout dicts, *without* plotly's property validation.

    Validation is about nine tenths of building a figure (≈ 100 ms of a Playground redraw for
    dicts we wrote ourselves), so the figures a slider redraws are written in plotly's canonical
    form (nested dicts: `title=dict(text=...)`, `marker=dict(color=...)`, no `xaxis_title`
    shorthands) and skip it. tests/test_viz.py keeps them honest: each must equal, key for key,
    the same figure built *with* validation.
    """
    template = _default_template(pio.templates.default)
    if template is not None and "template" not in layout:  # else plotly deep-copies the template every time
        layout = dict(layout, template=template)
    return go.Figure(data=data, layout=layout, _validate=False)


@functools.lru_cache(maxsize=4)
def _default_template(name) -> dict | None:
    """The default template as plain dicts, built once per template name (None: let plotly do it)."""
    return pio.templates[name].to_plotly_json() if isinstance(name, str) else None


def trace(kind: str, **props) -> dict:
    """One trace as a plain dict for `figure`: `kind` is plotly's trace type; None props are left out."""
    return dict(type=kind, **{k: v for k, v in props.items() if v is not None})

"""What every dashboard shares: copying a new figure into a live FigureWidget, the container,
the default config, the control width, the busy sign and a row of figures that fits the screen.

A dashboard holds no figure math and no process code: it reads its controls into a `MoEConfig`,
asks its stepper for a `StepTrace` (`cluster.step(...)`, any object with `.step` and
`.world_size` will do), draws the trace with `viz` and copies the result into `go.FigureWidget`s
with `batch_update`, so the page updates in one message, without re-creating the widget.
"""
from __future__ import annotations

import ipywidgets as w
import plotly.graph_objects as go

from ..config import MoEConfig

TOKENS_PER_RANK = (64, 128, 256, 512, 1024, 2048)
# Two columns of controls fit a 1280-px JupyterLab with the file browser open (≈ 880 px of output).
WIDE = dict(style={"description_width": "140px"}, layout=w.Layout(width="400px"))
BUSY = "<span style='color:#ff7f0e'><b>running…</b></span>"  # shown while a step runs
# A FigureWidget does not follow its output's width (plotly's widget view draws before it is
# attached to the page, so it falls back to 700 px and never resizes): dashboards give each figure
# a width that fits a 1280-px JupyterLab with the file browser open (≈ 850 px of output), or half of it.
FULL_WIDTH = 820
HALF_WIDTH = 405


def copy_figure(target: go.FigureWidget, fig: go.Figure) -> None:
    """Make `target` show `fig`: traces updated in place when they line up (same count and types,
    the usual slider move), replaced otherwise; layout replaced key by key. One batch message.
    The template is left alone: every viz figure uses the default one."""
    same = len(target.data) == len(fig.data) and all(a.type == b.type for a, b in zip(target.data, fig.data))
    if not same:
        target.data = []
        target.add_traces(list(fig.data))
    new_layout = {k: v for k, v in fig.layout.to_plotly_json().items() if k != "template"}
    with target.batch_update():
        if same:
            for old, new in zip(target.data, fig.data):
                props = {k: v for k, v in new.to_plotly_json().items() if k not in ("type", "uid")}
                for stale in set(old.to_plotly_json()) - set(props) - {"type", "uid"}:
                    old[stale] = None
                old.update(props, overwrite=True)
        for stale in set(target.layout.to_plotly_json()) - set(new_layout) - {"template"}:
            target.layout[stale] = None
        target.layout.update(new_layout, overwrite=True)


def sized(fig: go.Figure, width: int) -> go.Figure:
    """`fig` drawn `width` px wide (see FULL_WIDTH)."""
    fig.layout.width = width
    return fig


def figure_row(*figures: go.FigureWidget) -> w.Box:
    """Figures side by side, wrapping onto the next line when the output is narrower than them all."""
    return w.Box(list(figures), layout=w.Layout(display="flex", flex_flow="row wrap", width="100%"))


def default_config(world_size: int) -> MoEConfig:
    """8 experts when they split evenly over the ranks (the chapter's case), else one per rank."""
    return MoEConfig(num_experts=8 if 8 % world_size == 0 else world_size)


class Dashboard:
    """Shared plumbing: a container widget shown by `display(dashboard)` or as a cell's value."""

    widget: w.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

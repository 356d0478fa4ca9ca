"""What every dashboard shares: copying a new figure into a live FigureWidget, the container,
the default config, the control width, the busy sign and a row of figures that fits the screen.

A dashboard holds no figure math and no process code: it reads its controls into a `MoEConfig`,
asks its stepper for a `StepTrace` (`cluster.step(...)`, any object with `.step` and
`.world_size` will do), draws the trace with `viz` and copies the result into `go.FigureWidget`s
with `batch_update`, so the page updates in one message, without re-creating the widget.
"""
from __future__ import annotations

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
from plotly.basedatatypes import Undefined

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
    """Make `target` show `fig`: the page's views get only what changed, in one update message,
    and the page's model keeps the whole figure.

    `fig` was built (and validated, once) by a `viz` function, so its raw trace and layout dicts are
    copied as they are: no second validation, no deep copies. When the traces line up (same count
    and types, the usual slider move) only the changed keys of each trace travel; otherwise the
    traces are replaced. Layout keys are compared one by one (the template is left alone: every viz
    figure uses the default one). 1-D numeric arrays travel as typed arrays (binary buffers), not
    as lists of numbers.

    NOTE why the whole figure goes too. plotly's update messages are transient: the page applies
    them only once plotly's 5 MB page module has loaded for that figure (anywidget imports it per
    widget, after the widget's model exists, and nothing waits for it). On a busy page (chapter 3's
    run-all makes dozens of figures) a figure filled in by messages that arrive before then stays
    drawn empty. The synced `_widget_data` / `_widget_layout` are what plotly draws a new view
    from, so they are kept equal to the figure after every change.
    """
    same = len(target._data) == len(fig._data) and all(
        a.get("type") == b.get("type") for a, b in zip(target._data, fig._data))
    if not same:
        target.data = []
        target.add_traces(list(fig.data))
    if _send_changes(target, fig, same) or not same:
        _sync_whole_figure(target)


def _sync_whole_figure(target: go.FigureWidget) -> None:
    """Keep the synced `_widget_data` / `_widget_layout` equal to the figure (see copy_figure).

    Sent to the page until a view of this figure has been drawn there (plotly's view reports its
    defaults back once it has drawn, so its module has loaded and applies update messages from now
    on); after that, set without a message, so a page that asks for the state later still gets it.
    (The view reports its trace defaults in `_js2py_traceDeltas`; its layout report goes to a name
    the Python side lacks, so that one never arrives.)
    """
    data, layout = _tree_copy(target._data), _tree_copy(target._layout)
    if target.__dict__.get("_moe_page_drew") is None:
        target._moe_page_drew = False
        target.observe(lambda change: setattr(target, "_moe_page_drew", True), names=["_js2py_traceDeltas"])
    if target._moe_page_drew:
        target._trait_values.update(_widget_data=data, _widget_layout=layout)  # traitlets' store: no message
    else:
        target._widget_data, target._widget_layout = data, layout


def _tree_copy(value):
    """A copy of the dicts and lists of a plotly figure, sharing its leaves: plotly replaces a
    changed value (arrays included) inside these dicts rather than changing it in place."""
    if isinstance(value, dict):
        return {k: _tree_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tree_copy(v) for v in value]
    return value


def _send_changes(target: go.FigureWidget, fig: go.Figure, same: bool) -> bool:
    """Apply to `target` the keys of `fig` that differ, and send them to the page's views in
    plotly's update message. Returns whether anything changed."""
    n = len(fig._data)
    restyle = {}
    if same:
        for i, (old, new) in enumerate(zip(target._data, fig._data)):
            for key in (old.keys() | new.keys()) - {"type", "uid"}:
                if not _same(old.get(key), new.get(key)):
                    restyle.setdefault(key, [Undefined] * n)[i] = new.get(key)
    relayout = {key: fig._layout.get(key) for key in (target._layout.keys() | fig._layout.keys()) - {"template"}
                if not _same(target._layout.get(key), fig._layout.get(key))}
    # a subplot axis the target has never had (xaxis2, …) cannot be relaid out: plotly must create it
    new_axes = {k: relayout.pop(k) for k in list(relayout)
                if k not in target._layout and target.layout._subplot_re_match(k)}
    if new_axes:
        target.layout.update(new_axes)
    if not restyle and not relayout:
        return bool(new_axes)
    indexes = list(range(n))
    restyled, relaid, indexes = target._perform_plotly_update(restyle, relayout, indexes)
    target._send_update_msg(_typed(restyled), _typed(relaid), indexes)
    for i in indexes:  # children plotly made earlier re-read the new values on next access
        for key in restyled:
            target.data[i]._compound_props.pop(key, None)
            target.data[i]._compound_array_props.pop(key, None)
    for key in relaid:
        target.layout._compound_props.pop(key, None)
        target.layout._compound_array_props.pop(key, None)
    if restyled:
        target._dispatch_trace_change_callbacks(restyled, indexes)
    if relaid:
        target._dispatch_layout_change_callbacks(relaid)
    return True


def _same(a, b) -> bool:
    """Equal plotly values (numbers, strings, lists, dicts, numpy arrays), compared without copies."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and bool(np.array_equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return False
        try:
            return bool(a == b)
        except ValueError:  # numpy inside: element by element
            return all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except ValueError:
        return False


def _typed(value):
    """The message's copy of a value with 1-D numeric arrays as float64 / int32 numpy arrays, which
    the widget sends as binary buffers (plotly turns int64 arrays and lists into JSON lists)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.dtype.kind in "iu" and value.dtype.itemsize == 8:
            fits = value.size == 0 or (value.min() >= -(2**31) and value.max() < 2**31)
            return value.astype(np.int32 if fits else np.float64)
        return value
    if isinstance(value, list):
        if len(value) >= 16 and all(type(v) in (int, float) for v in value):
            return np.asarray(value, dtype=np.float64)
        return [_typed(v) for v in value]
    return value


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

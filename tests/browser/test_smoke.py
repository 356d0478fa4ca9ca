"""Every chapter runs clean in a real JupyterLab, and the harness itself round-trips a widget."""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from .conftest import (
    REPO,
    RESULTS,
    _result_name,
    assert_figures_fit,
    assert_no_browser_errors,
    error_outputs,
    open_notebook,
    run_all,
)

pytestmark = pytest.mark.browser

CHAPTERS = sorted((REPO / "chapters").glob("*.ipynb"))


# --------------------------------------------------------------------------- the harness itself

WIDGET_NOTEBOOK = [
    """\
import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import display

slider = widgets.IntSlider(value=3, min=0, max=10, description="middle")
fig = go.FigureWidget(data=[go.Bar(x=["a", "b", "c"], y=[1, slider.value, 1])])
fig.update_layout(height=300, margin=dict(t=20, b=20))

def redraw(change):
    fig.data[0].y = [1, change["new"], 1]

slider.observe(redraw, names="value")
display(widgets.VBox([slider, fig]))""",
    'print("ready", slider.value)',
]


@pytest.fixture
def widget_notebook(lab_server) -> str:
    """A tiny notebook with an IntSlider driving a FigureWidget bar chart, in the served root."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in WIDGET_NOTEBOOK]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = lab_server.root / "_harness"
    folder.mkdir(exist_ok=True)
    nbformat.write(nb, folder / "widget_roundtrip.ipynb")
    return "_harness/widget_roundtrip.ipynb"


_BAR_HEIGHTS_JS = """() => {
  const gd = document.querySelector('.jp-Notebook .js-plotly-plot');
  return gd && gd.data && gd.data.length ? Array.from(gd.data[0].y) : null;
}"""


def test_harness_widget_roundtrip(page, lab_server, widget_notebook):
    """Slider typed in the browser -> kernel callback -> FigureWidget -> plotly div in the browser."""
    open_notebook(page, lab_server, widget_notebook)
    state = run_all(page)
    assert error_outputs(page) == []
    assert state["unexecuted"] == [], state

    # The default state is drawn without anybody touching the slider.
    page.wait_for_function(f"() => JSON.stringify(({_BAR_HEIGHTS_JS})()) === '[1,3,1]'")

    readout = page.locator(".jp-Notebook .widget-readout").first
    readout.scroll_into_view_if_needed()
    readout.click()
    readout.fill("")
    readout.press_sequentially("7")
    started = time.monotonic()
    readout.press("Enter")
    page.wait_for_function(
        f"() => JSON.stringify(({_BAR_HEIGHTS_JS})()) === '[1,7,1]'", timeout=15_000, polling=10
    )
    print(f"typed value reached the figure in {1000 * (time.monotonic() - started):.0f} ms")
    assert page.locator(".jp-Notebook .widget-readout").first.inner_text().strip() == "7"

    plot = page.locator(".jp-Notebook .js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    RESULTS.mkdir(parents=True, exist_ok=True)
    page.locator(".jp-Notebook .jp-OutputArea").first.screenshot(
        path=str(RESULTS / f"{_result_name('test_harness_widget_roundtrip')}.output.png")
    )
    assert_no_browser_errors(page)

    # The error check must see a raised exception, or the chapter tests would prove nothing.
    page.evaluate(
        """async () => {
          const app = window.jupyterapp;
          const nb = app.shell.currentWidget.content;
          nb.activeCellIndex = nb.widgets.length - 1;
          await app.commands.execute('notebook:insert-cell-below');
          nb.activeCell.model.sharedModel.setSource('1 / 0');
          await app.commands.execute('notebook:run-cell');
        }"""
    )
    page.wait_for_function(
        """() => {
          const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
          const last = cells.get(cells.length - 1);
          return last.executionCount !== null && last.outputs.length > 0;
        }""",
        timeout=15_000,
    )
    raised = error_outputs(page)
    assert len(raised) == 1 and "ZeroDivisionError" in raised[0], raised


# --------------------------------------------------------------------------- every chapter

# Without chapters there is nothing to parametrize: define no test rather than an empty one.
# 02 and 03 are run (and checked more closely) by test_chapters.py
SMOKE = [p for p in CHAPTERS if not p.name.startswith(("02_", "03_"))]
if SMOKE:

    @pytest.mark.timeout(600)
    @pytest.mark.parametrize("notebook", SMOKE, ids=[p.name for p in SMOKE])
    def test_chapter_runs_clean(page, lab_server, notebook: Path):
        relpath = f"chapters/{notebook.name}"
        open_notebook(page, lab_server, relpath)
        state = run_all(page)
        errors = error_outputs(page)
        assert not errors, f"{relpath} raised:\n\n" + "\n\n".join(errors)
        assert state["unexecuted"] == [], f"{relpath}: code cells that never ran: {state}"
        assert_figures_fit(page, f"test_chapter_runs_clean_{notebook.name}", min_figures=0)
        assert_no_browser_errors(page)

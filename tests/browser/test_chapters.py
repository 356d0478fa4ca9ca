"""The chapters' interactive parts, driven the way a student drives them: mouse and keyboard.

Every check reads the figure the browser actually drew (the plotly graph div's `gd.data`) and
compares it with what the kernel computed for the same settings (asked through `kernel_eval`), so
a slider that moves without redrawing, or a figure that shows a stale step, fails the test.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from .conftest import (
    RESULTS,
    _result_name,
    assert_figures_fit,
    drag_slider_to_minimum,
    assert_no_browser_errors,
    controls_of,
    error_outputs,
    figures_json,
    kernel_eval,
    move_control,
    open_notebook,
    run_all,
    wait_until_redrawn,
)

pytestmark = pytest.mark.browser

# One slider move runs one real step on 8 ranks; the first one after the chapter's closing
# `cluster.close()` also starts the ranks again. Generous on a busy 2-core machine.
STEP_TIMEOUT_S = 120
DRAW_TIMEOUT_S = 180  # a busy 2-core machine draws a FigureWidget late
PLAYGROUND_FIGURES = ("buffers", "traffic", "load", "dropped", "priority")


# --------------------------------------------------------------------------- page-side helpers

# Installed once per page as window.__moe: find the Playground and read its figures.
_MOE_JS = r"""
() => {
  // plotly.py may send arrays as {dtype, bdata} (base64); plotly.js accepts both forms.
  const DTYPES = {i1: Int8Array, u1: Uint8Array, i2: Int16Array, u2: Uint16Array, i4: Int32Array,
                  u4: Uint32Array, f4: Float32Array, f8: Float64Array,
                  i8: BigInt64Array, u8: BigUint64Array};
  const arr = (v) => {
    if (v === undefined || v === null) return [];
    if (Array.isArray(v)) return v.map(Number);
    if (ArrayBuffer.isView(v)) return Array.from(v, Number);
    if (typeof v === 'object' && v.bdata !== undefined) {
      const raw = atob(v.bdata);
      const bytes = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
      const T = DTYPES[v.dtype];
      if (!T) throw new Error('unknown dtype ' + v.dtype);
      return Array.from(new T(bytes.buffer), Number);
    }
    throw new Error('not an array: ' + JSON.stringify(v).slice(0, 200));
  };
  const title = (gd) => {
    const t = gd && gd.layout && gd.layout.title;
    return typeof t === 'string' ? t : (t && t.text) || '';
  };
  const labelled = (root, selector, prefix) =>
    Array.from(root.querySelectorAll(selector)).filter(
      (el) => el.textContent.trim().toLowerCase().startsWith(prefix.toLowerCase()));
  // The Playground: the output area holding the slider labelled "capacity factor".
  const playground = () => {
    for (const out of document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')) {
      if (labelled(out, '.widget-label', 'capacity factor').length) return out;
    }
    return null;
  };
  const plots = (root) => Array.from((root || document).querySelectorAll('.js-plotly-plot'));
  const plot = (root, needle) => plots(root).find((gd) => title(gd).includes(needle)) || null;
  const trace = (gd, prefix, fallback) =>
    gd.data.find((t) => (t.name || '').toLowerCase().startsWith(prefix)) || gd.data[fallback];
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  // What the Playground's figures show now (null where a figure is not drawn yet).
  const state = () => {
    const root = playground();
    if (!root) return {found: false};
    const drawn = plots(root).filter((gd) => gd.data && gd.data.length && gd._fullLayout);
    const dropped = plot(root, 'Dropped:');
    const load = plot(root, 'Tokens per GPU');
    return {
      found: true,
      plots: drawn.length,
      titles: drawn.map(title),
      dropped: dropped && dropped.data.length > 1 ? sum(arr(trace(dropped, 'dropped', 1).y)) : null,
      dropped_title: dropped ? title(dropped) : null,
      recv: load && load.data.length ? arr(trace(load, 'received', 0).y) : null,
      failed: root.textContent.includes('step failed'),
    };
  };
  window.__moe = {arr, title, labelled, playground, plots, plot, state};
  return true;
}
"""

# The Playground as the kernel sees it, as one JSON line. JupyterLab hands widget messages to a
# kernel subshell: a slider's step runs on another thread *while* this code runs on the main one.
# So the snapshot says whether it is `settled`: no step running or pending before or after it was
# taken, and the trace belongs to the sliders' current settings. Leaves no names behind.
_KERNEL_STATE = """
def _moe_snapshot():
    import json
    before = (pg._busy, pg._dirty, pg.steps_run)
    trace, s = pg.trace, pg.sliders
    state = dict(
        dropped=int(trace.dropped.sum()), recv=[int(v) for v in trace.recv_tokens.tolist()],
        capacity=trace.capacity, k=int(s["k"].value), cf=float(s["capacity_factor"].value),
        dropless=bool(s["dropless"].value), skew=float(s["skew"].value), steps=pg.steps_run,
        error=None if pg.error is None else repr(pg.error),
    )
    after = (pg._busy, pg._dirty, pg.steps_run)
    state["settled"] = (before == after == (False, False, state["steps"])
                        and pg.trace is trace and pg._last_key == pg.settings())
    print(json.dumps(state))
try:
    _moe_snapshot()
finally:
    del _moe_snapshot
"""

_CLOSE_CLUSTER = """
def _moe_close():
    import time
    deadline = time.monotonic() + 30
    while (pg._busy or pg._dirty) and time.monotonic() < deadline:
        time.sleep(0.05)
    cluster.close()
try:
    _moe_close()
finally:
    del _moe_close
"""


def kernel_state(page) -> dict:
    return json.loads(kernel_eval(page, _KERNEL_STATE, timeout_s=STEP_TIMEOUT_S).strip().splitlines()[-1])


def page_state(page) -> dict:
    return page.evaluate("() => window.__moe.state()")


def poll(page, check, timeout_s: float, what: str):
    """Call check() until it returns something truthy; fail with its last answer after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result, detail = check()
        if result:
            return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:.0f} s; last seen: {detail}")
        page.wait_for_timeout(100)  # the poll interval, not a wait for something to happen


def settle(page, want, what: str, timeout_s: float = STEP_TIMEOUT_S) -> tuple[dict, dict]:
    """Wait until the kernel's Playground satisfies want(kernel_state) and the drawn figures show
    exactly the kernel's step (dropped count and per-GPU received tokens); return both states."""
    started = time.monotonic()

    def kernel_ready():
        k = kernel_state(page)
        return k["settled"] and want(k), k

    kernel = poll(page, kernel_ready, timeout_s, f"{what} (kernel)")
    assert kernel["error"] is None, f"{what}: the Playground's step failed: {kernel['error']}"

    def figures_agree():
        s = page_state(page)
        return s.get("dropped") == kernel["dropped"] and s.get("recv") == kernel["recv"], s

    shown = poll(page, figures_agree, DRAW_TIMEOUT_S, f"{what} (figures == kernel {kernel})")
    # Still the same step: nothing ran or started behind the one the figures show.
    again = kernel_state(page)
    assert again["settled"] and (again["dropped"], again["recv"], again["steps"]) == (
        kernel["dropped"], kernel["recv"], kernel["steps"]), (kernel, again)
    print(f"{what}: kernel and figures agree after {time.monotonic() - started:.2f} s "
          f"(dropped {kernel['dropped']}, received {kernel['recv']})")
    return kernel, shown


def shoot(page, locator, test: str, part: str) -> None:
    """Screenshot one element (a figure, an output) to results/<test>.<part>.png; never raises.

    A figure taller than the notebook panel (the 8-panel buffer figure) is shot with the window
    made tall enough for it, then the window is put back.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    grown = False
    try:
        locator.scroll_into_view_if_needed(timeout=5_000)
        box = locator.bounding_box()
        if box and size and box["height"] + 250 > size["height"]:
            page.set_viewport_size({"width": size["width"], "height": int(box["height"]) + 300})
            grown = True
            locator.scroll_into_view_if_needed(timeout=5_000)
        locator.screenshot(path=str(RESULTS / f"{_result_name(test)}.{part}.png"), timeout=15_000)
    except Exception as err:  # a screenshot must not hide the test's own failure
        print(f"[screenshot {part}] failed: {err!r}")
    finally:
        if grown:
            page.set_viewport_size(size)


def assert_ran_clean(page, relpath: str, state: dict) -> None:
    errors = error_outputs(page)
    assert not errors, f"{relpath} raised:\n\n" + "\n\n".join(errors)
    assert state["unexecuted"] == [], f"{relpath}: code cells that never ran: {state}"
    assert_no_browser_errors(page)


def cell_output_text(page, source_needle: str) -> str:
    """Text (stream and text/plain) of the first code cell whose source contains source_needle."""
    return page.evaluate(
        """(needle) => {
          const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
          for (let i = 0; i < cells.length; i++) {
            const cell = cells.get(i);
            if (cell.type !== 'code' || !cell.sharedModel.getSource().includes(needle)) continue;
            let text = '';
            for (let j = 0; j < cell.outputs.length; j++) {
              const o = cell.outputs.get(j).toJSON();
              if (o.output_type === 'stream') text += [].concat(o.text).join('');
              else if (o.data && o.data['text/plain']) text += [].concat(o.data['text/plain']).join('');
            }
            return text;
          }
          return null;
        }""",
        source_needle,
    )


def _open_and_run(page, lab_server, relpath):
    """Open a chapter, run all its cells and fail on any error output."""
    open_notebook(page, lab_server, relpath)
    t0 = time.monotonic()
    state = run_all(page)
    print(f"run-all of {relpath}: {time.monotonic() - t0:.1f} s")
    assert_ran_clean(page, relpath, state)
    return state


# --------------------------------------------------------------------------- chapter 3

LOAD_BALANCING = "chapters/03_load_balancing.ipynb"


@pytest.mark.timeout(900)
def test_load_balancing_playground(page, lab_server):
    """Chapter 3 at 1280 px with the file browser open: every figure fits; then every control of the
    Playground is moved as a student moves it (keyboard, mouse drag, typing, dropdowns, clicks) and
    each move must redraw at least one figure, with the kernel's step and the drawn figures agreeing."""
    test = "test_load_balancing_playground"
    _open_and_run(page, lab_server, LOAD_BALANCING)

    page.evaluate(_MOE_JS)
    root = page.locator(".jp-Notebook .jp-OutputArea-output").filter(
        has=page.locator(".widget-label", has_text=re.compile(r"^\s*capacity factor"))
    )
    assert root.count() == 1, f"expected one Playground output, found {root.count()}"
    try:
        poll(page, lambda: (lambda s: (s.get("plots") == len(PLAYGROUND_FIGURES), s))(page_state(page)),
             DRAW_TIMEOUT_S, f"the Playground's {len(PLAYGROUND_FIGURES)} figures drawn")
    finally:
        shoot(page, root, test, "playground")
    assert_figures_fit(page, test, min_figures=len(PLAYGROUND_FIGURES))
    controls = {label: (kind, loc) for kind, label, loc in controls_of(root)}
    assert len(controls) >= 8, f"Playground controls found: {sorted(controls)}"

    def control(prefix: str):
        hits = [name for name in controls if name.lower().startswith(prefix.lower())]
        assert len(hits) == 1, f"{prefix!r}: expected one control, found {hits} in {sorted(controls)}"
        return hits[0], controls[hits[0]][1]

    moved: list[str] = []

    def act(prefix: str, how=None) -> str:
        """Move one control (by `how`, or one keyboard step / next option / click) and require a redraw."""
        name, loc = control(prefix)
        before = figures_json(root)
        shown = how(loc) if how else move_control(page, controls[name][0], loc)
        t0 = time.monotonic()
        wait_until_redrawn(page, root, before, f"{name} -> {shown}", timeout_s=STEP_TIMEOUT_S)
        print(f"{name} -> {shown}: figures redrawn after {time.monotonic() - t0:.2f} s")
        moved.append(name)
        return shown

    def type_value(value: str):
        def how(loc):
            readout = loc.locator(".widget-readout")
            readout.click()
            readout.fill(value)
            readout.press("Enter")
            return value
        return how

    # "running…" must show while a step runs: watch the Playground's text for it.
    root.evaluate("""(el) => { window.__moeBusySeen = false;
      new MutationObserver(() => { if (el.textContent.includes('running…')) window.__moeBusySeen = true; })
        .observe(el, {subtree: true, childList: true, characterData: true}); }""")
    dropless = root.locator(".widget-checkbox").filter(has_text="dropless").locator("input[type=checkbox]")
    cf_slider = control("capacity factor")[1]
    try:
        # skew: one keyboard step, then typed back to 1 ("all tokens want E0")
        act("skew")
        act("skew", type_value("1"))
        # dropless: the chapter's text asks for capacity on; leave it unchecked
        if dropless.is_checked():
            act("dropless")
        else:
            act("dropless")
            act("dropless")
        capped, _ = settle(page, lambda k: not k["dropless"] and k["skew"] == 1.0, "capacity on, skew 1")
        assert capped["capacity"] is not None, capped

        # capacity factor: a real mouse drag past the slider's left end, to its minimum
        page.wait_for_function("(el) => !el.querySelector('.noUi-target[disabled]')",
                               arg=cf_slider.element_handle(), timeout=DRAW_TIMEOUT_S * 1000)

        def drag_to_minimum(loc):
            drag_slider_to_minimum(page, loc)
            return "dragged to the left end"

        act("capacity factor", drag_to_minimum)
        dragged, shown = settle(page, lambda k: k["cf"] < capped["cf"] and not k["dropless"],
                                "capacity factor dragged down")
        assert dragged["dropped"] > capped["dropped"], (capped, dragged)
        assert f"({dragged['dropped']} dropped)" in shown["dropped_title"].replace("<br>", " "), shown
        assert float(cf_slider.locator(".widget-readout").text_content()) == pytest.approx(dragged["cf"])
        shoot(page, root.locator(".js-plotly-plot").filter(has_text=re.compile(r"Dropped: \d")), test,
              "dropped.after_drag")

        # k by the keyboard; it must move the load the kernel computed
        act("k (experts")
        stepped, shown = settle(page, lambda k: k["k"] == dragged["k"] + 1, "k + 1 by keyboard")
        assert stepped["recv"] != dragged["recv"] and shown["recv"] == stepped["recv"], (dragged, stepped)

        # priority changes no count, only which assignments drop: the priority figure must show it
        priority_plot = root.locator(".js-plotly-plot").filter(has_text="Which assignments dropped")
        before = priority_plot.evaluate("(gd) => JSON.stringify(gd.data.map((t) => t.y))")
        act("priority")
        assert priority_plot.evaluate("(gd) => JSON.stringify(gd.data.map((t) => t.y))") != before
        shoot(page, priority_plot, test, "priority")

        act("over capacity")
        bytes_before = root.text_content()
        act("dispatch")
        assert root.text_content() != bytes_before  # the bytes beside the switch changed too
        act("N tokens")

        skipped = [name for name in controls if name not in moved and name.startswith("α")]
        missing = set(controls) - set(moved) - set(skipped)
        assert not missing, f"controls never moved: {missing}"
        if skipped:  # α moves to the BalancingLab; it has no figure of its own here
            print(f"not moved (leaves the Playground for the BalancingLab): {skipped}")
        assert page.evaluate("() => window.__moeBusySeen"), "no 'running…' was shown during a step"

        final, shown = settle(page, lambda k: True, "after every control")
        assert not shown["failed"], "a step failed"

        move_every_lab_control(page, test)
        assert error_outputs(page) == []
        assert_no_browser_errors(page)
    finally:
        shoot(page, root.locator(".widget-hbox").first, test, "controls")
        shoot(page, root.locator(".js-plotly-plot").filter(has_text="Tokens per GPU"), test, "load")
        try:
            kernel_eval(page, _CLOSE_CLUSTER, timeout_s=60)
        except Exception as err:
            print(f"[cleanup] cluster.close() failed: {err!r}")
        root.locator(".widget-hbox").first.scroll_into_view_if_needed(timeout=5_000)


# The BalancingLab's controls in an order where each one matters when it moves: α acts while the
# balancing is "aux", γ once it is "bias"; the capacity once dropless is off again.
LAB_ORDER = ("α", "k (experts", "training steps", "router start", "dropless", "dropless", "capacity",
             "balancing", "γ")


def move_every_lab_control(page, test: str) -> None:
    """Chapter 3's BalancingLab, when the library has one: every control must redraw a figure
    (each move trains the layer on the ranks again, so this waits for the run to finish)."""
    has_lab = kernel_eval(page, "import moe_lab.widgets as _w; print(hasattr(_w, 'BalancingLab')); del _w")
    if has_lab.strip() != "True":
        print("moe_lab.widgets has no BalancingLab: its controls are not moved")
        return
    lab = page.locator(".jp-Notebook .jp-OutputArea-output").filter(
        has=page.locator(".widget-label", has_text=re.compile(r"^\s*router start")))
    assert lab.count() == 1, f"expected one BalancingLab output in chapter 3, found {lab.count()}"
    controls = controls_of(lab)
    moved = []
    for prefix in LAB_ORDER:
        hits = [(kind, label, loc) for kind, label, loc in controls if label.lower().startswith(prefix.lower())]
        assert len(hits) == 1, f"{prefix!r}: expected one BalancingLab control, found {[h[1] for h in hits]}"
        kind, label, loc = hits[0]
        before = figures_json(lab)
        shown = move_control(page, kind, loc)
        t0 = time.monotonic()
        wait_until_redrawn(page, lab, before, f"lab {label} -> {shown}", timeout_s=STEP_TIMEOUT_S * 2, quiet_s=3.0)
        print(f"lab {label} -> {shown}: figures redrawn after {time.monotonic() - t0:.2f} s")
        moved.append(label)
    missing = {label for _, label, _ in controls} - set(moved)
    assert not missing, f"BalancingLab controls never moved: {missing}"
    shoot(page, lab, test, "lab")


# --------------------------------------------------------------------------- chapter 2

ALLTOALL = "chapters/02_alltoall.ipynb"

_BUFFERS_JS = """() => {
  for (const gd of document.querySelectorAll('.jp-Notebook .js-plotly-plot')) {
    const t = gd.layout && gd.layout.title;
    const title = typeof t === 'string' ? t : (t && t.text) || '';
    if (!title.startsWith('AlltoAll buffers on')) continue;
    const layout = gd._fullLayout || gd.layout;
    return {
      title,
      types: gd.data.map((d) => d.type),
      names: gd.data.map((d) => d.name),
      yaxes: Object.keys(layout).filter((key) => /^yaxis[0-9]*$/.test(key)).length,
      annotations: (gd.layout.annotations || []).map((a) => a.text),
      drawn: !!gd._fullLayout && gd.querySelectorAll('.heatmaplayer .hm').length,
    };
  }
  return null;
}"""


@pytest.mark.timeout(600)
def test_alltoall_token_path(page, lab_server):
    """The chapter's Question answered on the page: GPU 3 and GPU 7, and one buffer panel per GPU."""
    from playwright.sync_api import expect  # here: without playwright the fixtures skip, not import

    test = "test_alltoall_token_path"
    _open_and_run(page, lab_server, ALLTOALL)

    path_cell = page.locator(".jp-Notebook .jp-CodeCell").filter(has_text="describe_token_path").first
    buffers_plot = page.locator(".jp-Notebook .js-plotly-plot").filter(has_text="AlltoAll buffers on").first
    try:
        text = cell_output_text(page, "describe_token_path")
        assert text, "the describe_token_path cell printed nothing"
        for gpu in ("GPU 3", "GPU 7"):
            assert re.search(rf"\b{gpu}\b", text), f"{gpu} missing from the token path:\n{text}"
        shown = path_cell.locator(".jp-OutputArea")  # and the page shows that text
        expect(shown).to_contain_text(re.compile(r"GPU 3\b[\s\S]*GPU 7\b"), timeout=DRAW_TIMEOUT_S * 1000)

        buffers = poll(page, lambda: (lambda b: (b is not None and b["drawn"] == 8, b))(
            page.evaluate(_BUFFERS_JS)), DRAW_TIMEOUT_S, "the AlltoAll buffer figure drawn")
        assert buffers["types"] == ["heatmap"] * 8, buffers
        assert buffers["names"] == [f"GPU {r}" for r in range(8)], buffers
        assert buffers["yaxes"] == 8, buffers
        panels = [a for a in buffers["annotations"] if a.startswith("GPU ")]
        assert [p.split(":")[0] for p in panels] == [f"GPU {r}" for r in range(8)], panels
        assert_figures_fit(page, test, min_figures=3)

        # The TokenTracer: every control moves the drawn path.
        tracer = page.locator(".jp-Notebook .jp-OutputArea-output").filter(
            has=page.locator(".widget-label", has_text=re.compile(r"^\s*GPU \(source\)")))
        assert tracer.count() == 1, f"expected one TokenTracer output, found {tracer.count()}"
        found = controls_of(tracer)
        assert [label for _, label, _ in found] == ["GPU (source)", "token"], found
        for kind, label, loc in found:
            before = figures_json(tracer)
            shown = move_control(page, kind, loc)
            wait_until_redrawn(page, tracer, before, f"tracer {label} -> {shown}", timeout_s=DRAW_TIMEOUT_S)
            title = tracer.locator(".js-plotly-plot").evaluate("(gd) => gd.layout.title.text")
            assert (f"Token {shown} " if label == "token" else f"of GPU {shown} ") in title, (label, shown, title)
        shoot(page, tracer, test, "tracer")
        assert_no_browser_errors(page)
    finally:
        shoot(page, path_cell.locator(".jp-OutputArea"), test, "token_path")
        shoot(page, buffers_plot, test, "buffers")
        path_cell.scroll_into_view_if_needed(timeout=5_000)  # what the page screenshot shows

"""Browser harness: a throwaway JupyterLab server driven by headless Chromium through Playwright.

Fixtures
    lab_server  one JupyterLab per test session, serving a temporary copy of chapters/
    browser     one headless Chromium per test session (Debian's /usr/bin/chromium), started with crash
                reporting off; its teardown fails if any process it started (crashpad included) is left
    page        a fresh browser context per test; collects page and console errors and always
                saves a full-page screenshot to tests/browser/results/<test name>.png

Helpers
    open_notebook(page, server, relpath)  open a notebook and wait for its kernel to be idle
    run_all(page)                         run every cell and wait until the run has finished
    error_outputs(page)                   tracebacks of cells that raised (from the notebook model)
    assert_no_browser_errors(page)        fail on uncaught page errors or console errors
    kernel_eval(page, code)               run code in the open notebook's kernel, return its stdout
    open_file_browser(page)               show the file browser, as a student's JupyterLab does
    figure_fit_problems(page)             plots cut by their output area, cut titles, overlapping panel titles
    assert_figures_fit(page, name)        fail on any of those, after a screenshot of the page

Outside CI a missing Chromium or playwright skips these tests; with CI=true it fails them.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Crash reporting off, as far as flags go. Debian's Chromium 156 still starts two
    # chrome_crashpad_handler daemons (double-forked, so their parent becomes pid 1, which here never
    # reaps them: they stay as zombies). `--disable-crashpad-for-testing` does stop them but also
    # breaks navigation (net::ERR_ABORTED), so the browser fixture makes this process their
    # subreaper instead, and reaps them when the browser closes.
    "--disable-crash-reporter",
    "--disable-breakpad",
]
SESSION_MARK = "MOE_LAB_BROWSER_SESSION"  # set in Chromium's environment: finds its processes, crashpad too
VIEWPORT = {"width": 1280, "height": 1000}

SERVER_START_TIMEOUT_S = 60
OPEN_TIMEOUT_S = float(os.environ.get("MOE_LAB_BROWSER_OPEN_TIMEOUT", 180))
RUN_TIMEOUT_S = float(os.environ.get("MOE_LAB_BROWSER_RUN_TIMEOUT", 240))

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------- requirements


def _missing_requirements() -> list[str]:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package 'chromium')")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package 'playwright'")
    return missing


@pytest.fixture(scope="session")
def browser_requirements():
    missing = _missing_requirements()
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if IN_CI:
            pytest.fail(reason + " (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(reason)


# --------------------------------------------------------------------------- the lab server


@dataclass
class LabServer:
    url: str
    token: str
    root: Path
    proc: subprocess.Popen
    log_path: Path
    workspaces_dir: Path

    def api(self, method: str, path: str, timeout: float = 10):
        """Call the server's REST API; returns the decoded JSON body (or None)."""
        sep = "&" if "?" in path else "?"
        request = urllib.request.Request(
            f"{self.url}{path}{sep}token={self.token}", method=method
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no server log>"

    def delete_sessions(self) -> None:
        """Shut down every notebook session and kernel, so the next test starts fresh ones."""
        for kind in ("sessions", "kernels"):
            for item in self.api("GET", f"/api/{kind}"):
                try:
                    self.api("DELETE", f"/api/{kind}/{item['id']}", timeout=30)
                except urllib.error.HTTPError as err:
                    if err.code != 404:  # already gone with its session
                        raise

    def forget_workspaces(self) -> None:
        """Drop saved layouts, so the next page does not reopen the previous test's notebooks."""
        for saved in self.workspaces_dir.glob("*"):
            saved.unlink()

    def notebook_url(self, relpath: str) -> str:
        return f"{self.url}/lab/tree/{quote(relpath)}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """All live descendants of pid (Linux /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_server(server: LabServer) -> None:
    proc = server.proc
    if proc.poll() is None:
        try:
            server.delete_sessions()
        except Exception as err:  # the server may already be unhealthy; still stop it
            print(f"[lab_server] could not delete sessions: {err!r}", file=sys.stderr)
    # Kernels run in sessions of their own, so remember every descendant before stopping.
    leftovers = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in leftovers):
        time.sleep(0.1)
    _kill(leftovers, signal.SIGKILL)


@pytest.fixture(scope="session")
def lab_server(browser_requirements, tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    if (REPO / "chapters").is_dir():
        # Serve a copy: autosave and outputs must never touch the repository's notebooks.
        shutil.copytree(
            REPO / "chapters", root / "chapters",
            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"),
        )

    dirs = {}
    for name in ("config", "data", "runtime", "ipython", "settings", "workspaces"):
        dirs[name] = base / name
        dirs[name].mkdir()
    notification = dirs["settings"] / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    # Every cell stays in the page (no virtual scrolling): a figure far from the viewport is still
    # drawn and measurable, so the checks below see every output, not only the visible ones.
    notebook = dirs["settings"] / "@jupyterlab" / "notebook-extension"
    notebook.mkdir(parents=True)
    (notebook / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))

    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        JUPYTER_PREFER_ENV_PATH="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        # `python -m jupyter` finds `jupyter-lab` on PATH: make it this interpreter's.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    port, token = _free_port(), secrets.token_hex(24)
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")

    log_path = base / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = LabServer(f"http://127.0.0.1:{port}", token, root, proc, log_path, dirs["workspaces"])
    try:
        _wait_until_ready(server)
        yield server
    finally:
        _stop_server(server)


def _wait_until_ready(server: LabServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if server.proc.poll() is not None:
            pytest.fail(
                f"JupyterLab exited with status {server.proc.returncode}:\n{server.log()}",
                pytrace=False,
            )
        try:
            server.api("GET", "/api/status", timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"JupyterLab did not answer within {SERVER_START_TIMEOUT_S} s:\n{server.log()}",
                pytrace=False,
            )
        time.sleep(0.2)


# --------------------------------------------------------------------------- the browser


def _marked_processes(mark: str) -> dict[int, str]:
    """pid -> name of live processes whose environment carries SESSION_MARK=mark (this session's
    Chromium and anything it spawned, daemons included). A zombie has no environment: not listed."""
    needle = f"{SESSION_MARK}={mark}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
    return found


def _still_there(pid: int) -> str | None:
    """The process state letter (Z = zombie) of pid, or None when it is gone."""
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _become_subreaper(on: bool) -> bool:
    """Make this process the one that inherits orphaned descendants (Linux prctl
    PR_SET_CHILD_SUBREAPER), so daemons Chromium double-forks can be reaped here. False if unsupported."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap(pids) -> None:
    """Collect the exit status of those pids that are this process's exited children (zombies)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (or already reaped): nothing to collect


@pytest.fixture(scope="session")
def browser(browser_requirements):
    from playwright.sync_api import sync_playwright

    mark = secrets.token_hex(8)
    seen: dict[int, str] = {}
    subreaper = _become_subreaper(True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                      env={**os.environ, SESSION_MARK: mark})
        seen.update(_marked_processes(mark))
        try:
            yield chromium
        finally:
            seen.update(_marked_processes(mark))
            chromium.close()
    try:
        _assert_nothing_left(seen, mark)
    finally:
        if subreaper:
            _become_subreaper(False)


def _assert_nothing_left(seen: dict[int, str], mark: str, wait_s: float = 10.0) -> None:
    """Every process the session's Chromium started (crashpad handlers included) must be gone once
    it closed, zombies included: reaped here, or it would stay in the process table for good."""
    deadline = time.monotonic() + wait_s
    while True:
        _reap(seen)
        left = {pid: (name, _still_there(pid)) for pid, name in seen.items() if _still_there(pid)}
        left.update({pid: (name, "live") for pid, name in _marked_processes(mark).items()})
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if left:  # ours by their environment mark: end them so they do not outlive the tests either
        _kill([pid for pid, (_, state) in left.items() if state != "Z"], signal.SIGKILL)
        time.sleep(0.5)
        _reap(left)
    crashpad = sorted(name for name in seen.values() if "crashpad" in name)
    print(f"[browser] {len(seen)} processes of the session's Chromium seen ({crashpad or 'no crashpad'}); "
          f"left after close: {left or 'none'}", file=sys.stderr)
    assert not left, f"processes of the browser session left behind (pid: (name, state)): {left}"


def _result_name(nodeid: str) -> str:
    name = nodeid.split("::", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def page(browser, lab_server, request):
    """A fresh page; page and console errors are collected, a screenshot is always saved."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    console: list[str] = []

    def on_console(msg):
        console.append(f"[{msg.type}] {msg.text}")
        if msg.type == "error":
            errors.append(f"console error: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.moe_errors = errors  # read by assert_no_browser_errors
    page.moe_checked = 0

    try:
        yield page
    finally:
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = _result_name(request.node.nodeid)
        try:
            page.screenshot(path=str(RESULTS / f"{name}.png"), full_page=True, timeout=15_000)
        except Exception as err:
            print(f"[page] screenshot failed: {err!r}", file=sys.stderr)
        (RESULTS / f"{name}.console.txt").write_text("\n".join(console) + "\n")
        context.close()
        lab_server.delete_sessions()
        lab_server.forget_workspaces()

    # Errors that happened after the test's own check still count against it.
    call = getattr(request.node, "report_call", None)
    late = [e for e in errors[page.moe_checked:] if not any(b in e for b in _BENIGN)]
    if call is not None and call.passed and late:
        pytest.fail("browser errors after the test body:\n" + "\n".join(late))


# --------------------------------------------------------------------------- helpers


_KERNEL_IDLE_JS = """
(path) => {
  const app = window.jupyterapp;
  const w = app && app.shell && app.shell.currentWidget;
  if (!w || !w.context || w.context.path !== path || !w.sessionContext) return false;
  const sc = w.sessionContext;
  const kernel = sc.session && sc.session.kernel;
  return sc.isReady && w.context.isReady && !!kernel && kernel.status === 'idle'
         && kernel.connectionStatus === 'connected';
}
"""


def open_notebook(page, server: LabServer, relpath: str, timeout_s: float = OPEN_TIMEOUT_S,
                  file_browser: bool = True):
    """Open `relpath` (relative to the server root) and wait until its kernel is idle.

    The toolbar says "idle" before any kernel exists, and running cells then opens a
    "Select Kernel" dialog; so wait on the session itself, through the exposed app.
    With file_browser (the default) the file browser is shown beside the notebook, as a student
    has it: figures are drawn at that width.
    """
    # Return once the server answered: waiting for "load" fails with ERR_ABORTED when JupyterLab
    # rewrites the URL while a slow (busy machine) page is still loading; the kernel wait below
    # is what says the notebook is ready.
    page.goto(server.notebook_url(relpath), wait_until="commit")
    page.wait_for_function(_KERNEL_IDLE_JS, arg=relpath, timeout=timeout_s * 1000, polling=100)
    # Only this notebook: a tab restored from an earlier test would start a kernel of its own.
    open_docs = page.evaluate(
        "() => Array.from(window.jupyterapp.shell.widgets('main'))"
        ".map((w) => (w.context ? w.context.path : w.id))"
    )
    assert open_docs == [relpath], f"expected only {relpath} open, found {open_docs}"
    if file_browser:
        open_file_browser(page)


def open_file_browser(page) -> None:
    """Show the file browser in the left panel and wait until the notebook has its narrower width."""
    page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")
    page.wait_for_function(
        "() => !window.jupyterapp.shell.leftCollapsed"
        " && document.querySelector('.jp-FileBrowser').getBoundingClientRect().width > 100",
        timeout=15_000,
    )


# --------------------------------------------------------------------------- figures fit

# For every plotly figure in the notebook's outputs: scroll it into view (JupyterLab skips laying
# out cells far from the viewport), then compare boxes. A figure is cut when its drawing (the
# plot's main svg) reaches past its output area or past any ancestor that clips (overflow other
# than visible); a title is cut when it reaches past the drawing; panel titles (annotations in
# paper coordinates) must not overlap each other.
_FIT_JS = """
async () => {
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const box = (el) => { const r = el.getBoundingClientRect();
                        return {l: r.left, t: r.top, r: r.right, b: r.bottom, w: r.width, h: r.height}; };
  const inside = (a, b, tol) => a.l >= b.l - tol && a.r <= b.r + tol && a.t >= b.t - tol && a.b <= b.b + tol;
  const overlap = (a, b) => Math.min(a.r, b.r) - Math.max(a.l, b.l) > 1 && Math.min(a.b, b.b) - Math.max(a.t, b.t) > 1;
  const titleOf = (gd) => { const t = (gd._fullLayout && gd._fullLayout.title) || (gd.layout && gd.layout.title);
                            return (typeof t === 'string' ? t : (t && t.text) || '').slice(0, 60); };
  const problems = [], checked = [], skipped = [];
  const all = document.querySelectorAll('.js-plotly-plot').length;
  const plots = Array.from(document.querySelectorAll('.jp-Notebook .js-plotly-plot'));
  const path = (el) => { const names = [];
    for (let e = el; e && !e.classList.contains('jp-Notebook'); e = e.parentElement) names.push(e.className.split(' ')[0] || e.tagName);
    return names.join(' < '); };
  for (const gd of plots) {
    gd.scrollIntoView({block: 'center'});
    await frame(); await frame();
    const svg = gd.querySelector('.main-svg');
    if (!svg || !gd._fullLayout) {
      skipped.push({svg: !!svg, full: !!gd._fullLayout, cls: gd.className, out: !!gd.closest('.jp-OutputArea-output')});
      continue;
    }
    const name = titleOf(gd) || '(untitled figure)';
    const drawn = box(svg);
    const outEl = gd.closest('.jp-OutputArea-output') || gd.closest('.jp-OutputArea');
    if (!outEl) { skipped.push({name, path: path(gd)}); continue; }
    const out = box(outEl);
    checked.push({name, drawn, out, path: path(gd)});
    if (drawn.w < 50) { problems.push(`${name}: drawn ${drawn.w.toFixed(0)} px wide`); continue; }
    if (!inside(drawn, {l: out.l, r: out.r, t: -1e9, b: 1e9}, 1)) {
      problems.push(`${name}: drawing [${drawn.l.toFixed(0)}, ${drawn.r.toFixed(0)}] px leaves its output `
                    + `area [${out.l.toFixed(0)}, ${out.r.toFixed(0)}]`);
    }
    for (let el = gd.parentElement; el && !el.classList.contains('jp-Notebook'); el = el.parentElement) {
      const style = getComputedStyle(el);
      if (style.overflowX === 'visible' && style.overflowY === 'visible') continue;
      const clip = box(el);
      if (drawn.l < clip.l - 1 || drawn.r > clip.r + 1) {
        problems.push(`${name}: cut by a clipping ${el.className.split(' ')[0] || el.tagName} `
                      + `[${clip.l.toFixed(0)}, ${clip.r.toFixed(0)}] (drawing [${drawn.l.toFixed(0)}, ${drawn.r.toFixed(0)}])`);
        break;
      }
    }
    const title = gd.querySelector('.g-gtitle');
    if (title && !inside(box(title), drawn, 1)) problems.push(`${name}: title cut at the figure's edge`);
    const legend = gd.querySelector('.legend');
    if (legend && !inside(box(legend), drawn, 1)) problems.push(`${name}: legend outside the figure`);
    const notes = gd.layout.annotations || [];
    const panels = Array.from(gd.querySelectorAll('.annotation')).filter((el) => {
      const a = notes[Number(el.getAttribute('data-index'))];
      return a && a.xref === 'paper' && a.yref === 'paper' && a.text;
    }).map((el) => ({text: notes[Number(el.getAttribute('data-index'))].text, b: box(el)}));
    for (const p of panels) {
      if (!inside(p.b, drawn, 1)) problems.push(`${name}: panel title "${p.text}" cut at the figure's edge`);
      if (title && overlap(box(title), p.b)) problems.push(`${name}: the title overlaps panel title "${p.text}"`);
    }
    for (let i = 0; i < panels.length; i++) {
      for (let j = i + 1; j < panels.length; j++) {
        if (overlap(panels[i].b, panels[j].b)) {
          problems.push(`${name}: panel titles "${panels[i].text}" and "${panels[j].text}" overlap`);
        }
      }
    }
  }
  return {problems, checked, skipped, all, plots: plots.length};
}
"""


def figure_fit_problems(page) -> dict:
    """{"problems": [...], "checked": [per figure: name, drawn box, output box]} for every plotly
    figure in the open notebook's outputs (see _FIT_JS)."""
    return page.evaluate(_FIT_JS)


def assert_figures_fit(page, name: str, min_figures: int = 1) -> dict:
    """Screenshot the page (results/<name>.fit.png) and fail on any figure that does not fit."""
    report = figure_fit_problems(page)
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(RESULTS / f"{_result_name(name)}.fit.png"), timeout=15_000)
    except Exception as err:  # the screenshot must not hide the check's own result
        print(f"[fit] screenshot failed: {err!r}", file=sys.stderr)
    widths = [round(c["drawn"]["w"]) for c in report["checked"]]
    print(f"fit: {len(report['checked'])} figures, drawn widths {widths} px, page {page.viewport_size}")
    assert len(report["checked"]) >= min_figures, f"expected >= {min_figures} figures, found {report}"
    assert not report["problems"], "figures that do not fit:\n" + "\n".join(report["problems"])
    return report


_RUN_STATE_JS = """
() => {
  const w = window.jupyterapp.shell.currentWidget;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.model.cells;
  const unexecuted = [];
  let errors = 0, running = 0;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    if (cell.executionCount === null || cell.executionCount === undefined) unexecuted.push(i);
    if (cell.executionState === 'running') running += 1;
    for (let j = 0; j < cell.outputs.length; j++) {
      if (cell.outputs.get(j).type === 'error') errors += 1;
    }
  }
  return {
    done: window.__moeRunAll ? window.__moeRunAll.done : false,
    result: window.__moeRunAll ? window.__moeRunAll.result : null,
    kernel: kernel ? kernel.status : 'none',
    unexecuted, errors, running,
  };
}
"""


def run_all(page, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """Run every cell and wait until the kernel is idle and every code cell has run.

    Stops waiting early when a cell raised (run-all stops there), so the caller can report the
    traceback from error_outputs(). Returns the final state:
    {"done", "result", "kernel", "unexecuted": [cell indexes], "errors", "running"}.
    """
    page.evaluate(
        """async () => {
          const app = window.jupyterapp;
          // Reset execution counts so that stale counts from a saved notebook do not count.
          await app.commands.execute('notebook:clear-all-cell-outputs');
          window.__moeRunAll = {done: false, result: null};
          app.commands.execute('notebook:run-all-cells').then(
            (result) => { window.__moeRunAll = {done: true, result: result}; },
            (err) => { window.__moeRunAll = {done: true, result: 'rejected: ' + err}; });
        }"""
    )
    finished = f"""() => {{
      const s = ({_RUN_STATE_JS})();
      return s.done && s.kernel === 'idle' && s.running === 0
             && (s.unexecuted.length === 0 || s.errors > 0);
    }}"""
    try:
        page.wait_for_function(finished, timeout=timeout_s * 1000, polling=200)
    except Exception as err:
        state = page.evaluate(_RUN_STATE_JS)
        raise AssertionError(f"run-all did not finish within {timeout_s:.0f} s: {state}") from err
    return page.evaluate(_RUN_STATE_JS)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_outputs(page) -> list[str]:
    """Tracebacks of outputs with output_type 'error' (raised exceptions), one string per output.

    Cells that are meant to raise (tag 'raises-exception' or '# NBVAL_RAISES_EXCEPTION')
    are not counted. Text written to stderr (warnings, progress bars) is not an error.
    """
    found = page.evaluate(
        """() => {
          const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
          const out = [];
          for (let i = 0; i < cells.length; i++) {
            const cell = cells.get(i);
            if (cell.type !== 'code') continue;
            const tags = (cell.getMetadata ? cell.getMetadata('tags') : null) || [];
            const source = cell.sharedModel.getSource();
            if (tags.includes('raises-exception') || source.includes('NBVAL_RAISES_EXCEPTION')) continue;
            for (let j = 0; j < cell.outputs.length; j++) {
              const o = cell.outputs.get(j).toJSON();
              if (o.output_type === 'error') {
                out.push({cell: i, ename: o.ename, evalue: o.evalue,
                          traceback: (o.traceback || []).join('\\n')});
              }
            }
          }
          return out;
        }"""
    )
    return [
        f"cell {e['cell']}: {e['ename']}: {e['evalue']}\n{_ANSI.sub('', e['traceback'])}"
        for e in found
    ]


# jupyterlab-manager logs this when a view asks for a widget whose model a later run of its cell
# closed (the lab replaces its FigureWidgets' old views); the page itself is fine
_BENIGN = ("Error: widget model not found",)


def assert_no_browser_errors(page) -> None:
    page.moe_checked = len(page.moe_errors)
    errors = [e for e in page.moe_errors if not any(b in e for b in _BENIGN)]
    assert not errors, "errors in the browser:\n" + "\n".join(errors)


_KERNEL_EVAL_JS = """
async ([code, timeoutMs]) => {
  const w = window.jupyterapp.shell.currentWidget;
  const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  if (!kernel) return {status: 'no-kernel', stdout: '', stderr: '', error: 'no kernel'};
  const future = kernel.requestExecute(
    {code, silent: false, store_history: false, allow_stdin: false, stop_on_error: false});
  let stdout = '', stderr = '', error = null;
  // Only this request's messages reach the future: the notebook's cells never see them.
  future.onIOPub = (msg) => {
    const t = msg.header.msg_type;
    if (t === 'stream') {
      if (msg.content.name === 'stderr') stderr += msg.content.text; else stdout += msg.content.text;
    } else if (t === 'error') {
      error = msg.content.ename + ': ' + msg.content.evalue;
    }
  };
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(null), timeoutMs);
  });
  const reply = await Promise.race([future.done, timeout]);
  clearTimeout(timer);
  if (reply === null) {
    future.dispose();
    return {status: 'timeout', stdout, stderr, error};
  }
  return {status: reply.content.status, stdout, stderr, error};
}
"""


def kernel_eval(page, code: str, timeout_s: float = 60) -> str:
    """Run `code` in the kernel of the notebook open in `page`; return what it printed to stdout.

    The request goes through the page's own kernel connection, after any widget messages the page
    sent before it, so the answer reflects every slider change made so far. Nothing appears in the
    notebook and the execution count does not move. Raises AssertionError when the code raised or
    did not finish within timeout_s.
    """
    result = page.evaluate(_KERNEL_EVAL_JS, [code, int(timeout_s * 1000)])
    if result["status"] != "ok" or result["error"]:
        raise AssertionError(
            f"kernel_eval({code!r}) -> {result['status']}: {result['error']}\n"
            f"stdout: {result['stdout']}\nstderr: {result['stderr']}"
        )
    return result["stdout"]


# --------------------------------------------------------------------------- moving a dashboard's controls

# Everything the figures inside `root` draw, as one string: any redraw that changes a number, a
# bar or a title changes it. (plotly.py may send arrays as {dtype, bdata}: compared as they are.)
_FIGURES_JSON_JS = """
(root) => JSON.stringify(Array.from(root.querySelectorAll('.js-plotly-plot')).map((gd) => [
  (gd.data || []).map((t) => [t.name, t.x, t.y, t.z, t.text]),
  gd.layout && gd.layout.title, (gd.layout && gd.layout.annotations || []).map((a) => a.text)]))
"""
BUSY_TEXT = "running…"


def figures_json(root) -> str:
    """What the plotly figures inside the element `root` (a Playwright locator) draw now."""
    return root.evaluate(_FIGURES_JSON_JS)


def wait_until_redrawn(page, root, before: str, what: str, timeout_s: float = 120, quiet_s: float = 1.0) -> str:
    """Wait until the figures in `root` differ from `before` and then stay the same for quiet_s with
    no "running…" shown (so a step still running does not count); return their new state."""
    deadline = time.monotonic() + timeout_s
    last, since = figures_json(root), time.monotonic()
    while True:
        page.wait_for_timeout(150)  # the poll interval, not a wait for something to happen
        now = figures_json(root)
        busy = BUSY_TEXT in (root.text_content() or "")
        if now != last or busy:
            last, since = now, time.monotonic()
        elif now != before and time.monotonic() - since >= quiet_s:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: no figure changed within {timeout_s:.0f} s"
                                 + (" (still running)" if busy else ""))


def drag_slider_to_minimum(page, slider) -> None:
    """Drag a slider's handle with the mouse past the left end of its track, as a student would."""
    handle, track = slider.locator(".noUi-handle"), slider.locator(".noUi-target")
    handle.scroll_into_view_if_needed()
    hb, tb = handle.bounding_box(), track.bounding_box()
    x0, y0 = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 - 5, y0, steps=3)
    page.mouse.move(tb["x"] - 40, y0, steps=10)
    page.mouse.up()


def controls_of(root) -> list[tuple[str, str, object]]:
    """(kind, label, locator) of every slider, dropdown and checkbox inside `root`, in page order."""
    found = []
    for kind, selector in (("slider", ".widget-slider"), ("dropdown", ".widget-dropdown"),
                           ("checkbox", ".widget-checkbox")):
        for i in range(root.locator(selector).count()):
            control = root.locator(selector).nth(i)
            # ipywidgets puts a zero-width space in a checkbox's (hidden) description label
            label = (control.locator(".widget-label").first.text_content() or "").strip().strip("\u200b")
            if kind == "checkbox":
                label = label or (control.text_content() or "").strip().strip("\u200b").strip()
            found.append((kind, label, control))
    return found


def move_control(page, kind: str, control) -> str:
    """Move one control the way a student does: a slider's handle by one keyboard step (back
    when it is at its end), a dropdown to its next option, a checkbox by a click. Returns what
    it shows now (readout, option or checked state)."""
    control.scroll_into_view_if_needed()
    if kind == "slider":
        handle = control.locator(".noUi-handle")
        readout = control.locator(".widget-readout")
        before = readout.text_content() if readout.count() else handle.get_attribute("aria-valuenow")
        at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        handle.focus()
        handle.press("ArrowLeft" if at_max else "ArrowRight")
        page.wait_for_function(
            "([el, before]) => { const r = el.querySelector('.widget-readout');"
            " const v = r ? r.textContent : el.querySelector('.noUi-handle').getAttribute('aria-valuenow');"
            " return v !== before; }", arg=[control.element_handle(), before], timeout=10_000)
        return readout.text_content() if readout.count() else handle.get_attribute("aria-valuenow")
    if kind == "dropdown":
        select = control.locator("select")
        options = select.locator("option").all_text_contents()
        current = select.evaluate("(el) => el.options[el.selectedIndex].textContent")
        target = options[(options.index(current) + 1) % len(options)]
        select.select_option(label=target)
        return target
    box = control.locator("input[type=checkbox]")
    box.click()
    return "checked" if box.is_checked() else "unchecked"

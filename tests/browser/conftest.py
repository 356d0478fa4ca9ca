"""Browser harness: a throwaway JupyterLab server driven by headless Chromium through Playwright.

Fixtures
    lab_server  one JupyterLab per test session, serving a temporary copy of chapters/
    browser     one headless Chromium per test session (Debian's /usr/bin/chromium)
    page        a fresh browser context per test; collects page and console errors and always
                saves a full-page screenshot to tests/browser/results/<test name>.png

Helpers
    open_notebook(page, server, relpath)  open a notebook and wait for its kernel to be idle
    run_all(page)                         run every cell and wait until the run has finished
    error_outputs(page)                   tracebacks of cells that raised (from the notebook model)
    assert_no_browser_errors(page)        fail on uncaught page errors or console errors
    kernel_eval(page, code)               run code in the open notebook's kernel, return its stdout

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
]
VIEWPORT = {"width": 1280, "height": 1000}

SERVER_START_TIMEOUT_S = 60
OPEN_TIMEOUT_S = float(os.environ.get("MOE_LAB_BROWSER_OPEN_TIMEOUT", 90))
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


@pytest.fixture(scope="session")
def browser(browser_requirements):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


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
    if call is not None and call.passed and len(errors) > page.moe_checked:
        pytest.fail("browser errors after the test body:\n" + "\n".join(errors[page.moe_checked:]))


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


def open_notebook(page, server: LabServer, relpath: str, timeout_s: float = OPEN_TIMEOUT_S):
    """Open `relpath` (relative to the server root) and wait until its kernel is idle.

    The toolbar says "idle" before any kernel exists, and running cells then opens a
    "Select Kernel" dialog; so wait on the session itself, through the exposed app.
    """
    page.goto(server.notebook_url(relpath))
    page.wait_for_function(_KERNEL_IDLE_JS, arg=relpath, timeout=timeout_s * 1000, polling=100)
    # Only this notebook: a tab restored from an earlier test would start a kernel of its own.
    open_docs = page.evaluate(
        "() => Array.from(window.jupyterapp.shell.widgets('main'))"
        ".map((w) => (w.context ? w.context.path : w.id))"
    )
    assert open_docs == [relpath], f"expected only {relpath} open, found {open_docs}"


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


def assert_no_browser_errors(page) -> None:
    errors = page.moe_errors
    page.moe_checked = len(errors)
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

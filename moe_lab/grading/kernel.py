"""Running one assembled notebook in a fresh kernel, with a time limit per cell and per notebook.

The grader (moe_lab/grading/grader.py) decides what a verdict is worth; this module only produces the
verdicts, one per code cell that got one:

    ("ok", "")               the cell ran and its reply carried no error
    ("error", first line)    the cell raised: `AssertionError: gates must sum to 1`
    ("timeout", message)     the cell ran past its limit and was interrupted (grading goes on)
    ("dead", message)        the kernel died in this cell; nothing after it runs

The kernel starts in an empty temporary folder (removed afterwards), in a process group of its
own, and that whole group is killed at the end: whatever a submission started (ranks of a
Cluster, a stray subprocess) goes with it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ..paths import repo_root

TIMEOUT_ENAME = "GradingTimeout"  # ename of a cell cut off by the grader
_quiet = logging.getLogger("moe_lab.grading.kernel")
_quiet.addHandler(logging.NullHandler())
_quiet.setLevel(logging.CRITICAL)
_quiet.propagate = False


def kernel_env() -> dict:
    """The grader's environment, with this copy of moe_lab importable in the kernel."""
    env = dict(os.environ)
    root = repo_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def _first_line(reply_content: dict, errors: list) -> str:
    """`AssertionError: gates must sum to 1`: the first line of the cell's error, for the table."""
    err = errors[0] if errors else reply_content
    text = f"{err.get('ename', 'Error')}: {err.get('evalue', '')}".strip()
    return text.splitlines()[0][:200]


async def run_notebook(nb, cell_timeout: float, notebook_timeout: float, kernel_name: str) -> dict[int, tuple]:
    """Run every code cell; return {cell index: (status, message)} for the cells that got a verdict.

    status: "ok", "error", "timeout" (interrupted after its limit), "dead" (the kernel died in it).
    Cells after a dead kernel, after the notebook's time limit, or after two timeouts whose
    interrupt went unanswered (a kernel that ignores interrupts) get no verdict.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    replies: dict[int, dict] = {}
    limit = [cell_timeout]
    client = NotebookClient(
        nb, kernel_name=kernel_name, allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": TIMEOUT_ENAME, "evalue": "cell ran past its time limit", "traceback": []},
        timeout_func=lambda cell: limit[0], iopub_timeout=2, shutdown_kernel="immediate",
        record_timing=False, log=_quiet,
        on_cell_executed=lambda cell, cell_index, execute_reply: replies.__setitem__(cell_index, execute_reply),
    )
    verdicts: dict[int, tuple] = {}
    workdir = tempfile.mkdtemp(prefix="moe_lab_grade_")
    pgid = None
    try:
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the kernel's own log lines
        async with client.async_setup_kernel(cwd=workdir, env=kernel_env(), **quiet):
            pgid = getattr(getattr(client.km, "provisioner", None), "pgid", None)
            _stop_all_on_ctrl_c()  # nbclient's own handler would only stop this kernel
            deadline = time.monotonic() + notebook_timeout
            stuck = 0
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                limit[0] = min(cell_timeout, deadline - time.monotonic())
                if limit[0] <= 0 or stuck >= 2:
                    break
                try:
                    await client.async_execute_cell(cell, i)
                except DeadKernelError:
                    verdicts[i] = ("dead", "the kernel died")
                    break
                except Exception as e:  # nbclient gave up on this kernel: keep what was earned
                    verdicts[i] = ("dead", f"{type(e).__name__}: {e}"[:200])
                    break
                content = replies.get(i, {}).get("content", {})
                errors = [o for o in cell.outputs if o.get("output_type") == "error"]
                if content.get("ename") == TIMEOUT_ENAME:
                    verdicts[i] = ("timeout", f"timed out after {limit[0]:.3g} s")
                    stuck = 0 if errors else stuck + 1  # no KeyboardInterrupt seen: still running
                elif content.get("status") != "ok" or errors:
                    verdicts[i] = ("error", _first_line(content, errors))
                    stuck = 0
                else:
                    verdicts[i] = ("ok", "")
                    stuck = 0
    finally:
        _kill_group(pgid)
        shutil.rmtree(workdir, ignore_errors=True)
    return verdicts


def _stop_all_on_ctrl_c() -> None:
    """Ctrl-C stops the whole grading run; every kernel is still shut down on the way out."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no signals
        pass


def _kill_group(pgid) -> None:
    """The kernel ran in its own process group: make sure nothing it started outlives it."""
    if pgid and pgid != os.getpgrp():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

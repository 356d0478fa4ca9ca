"""One submission's kernel: started in its box, fed code cell by cell, killed with everything it started.

The grader never reads a verdict from the kernel: it only sends code and collects what came back
(an error's first line, the printed text, capped). Whether a check passed is decided in the grader's
own process (moe_lab/grading/judge.py); this module only runs code and reports

    Run("ok", "", text)                 the code ran to the end
    Run("error", "NameError: ...", text) it raised
    Run("timeout", "...", text)         it ran past its limit and was interrupted
    Run("dead", "...", text)            the kernel died, or stopped answering: nothing more runs

Output is capped per cell (OUTPUT_CAP bytes, then dropped and marked), so a flood of prints costs
the grader no memory.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..paths import repo_root
from .sandbox import SCRATCH, Limits, box_argv

OUTPUT_CAP = 1 << 20  # bytes of printed output kept per cell
TRUNCATED = "\n[... output truncated: more than 1 MB printed ...]\n"


@dataclass
class Run:
    status: str  # ok | error | timeout | dead
    message: str = ""
    output: str = ""


def _boxed_manager_class():
    from jupyter_client import KernelManager

    class BoxedKernelManager(KernelManager):
        """A KernelManager whose kernel command is wrapped in the box (or left alone when unsafe)."""
        wrap = staticmethod(lambda argv: argv)

        def format_kernel_cmd(self, extra_arguments=None):
            return self.wrap(super().format_kernel_cmd(extra_arguments))

    return BoxedKernelManager


class Kernel:
    """A fresh IPython kernel in a fresh scratch folder; `sandbox=False` is the `--unsafe` mode."""

    def __init__(self, sandbox: bool = True, limits: Limits = Limits(), startup_timeout: float = 120.0):
        self.sandbox, self.limits = sandbox, limits
        # short: a unix socket path must stay under ~100 characters
        self.root = Path(tempfile.mkdtemp(prefix="mlg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.scratch = self.root / "s"
        self.sockets = self.root / "k"
        self.scratch.mkdir()
        self.sockets.mkdir()
        self.workdir = SCRATCH if sandbox else str(self.scratch)  # the kernel's cwd, as it sees it
        self.km = self.kc = None
        self._pgid = None
        self._start(startup_timeout)

    def _start(self, timeout: float) -> None:
        cls = _boxed_manager_class()
        km = cls(kernel_name="python3", transport="ipc", ip=str(self.sockets / "c"),
                 connection_file=str(self.sockets / "kernel.json"))
        km.kernel_spec.interrupt_mode = "message"  # a signal to bwrap would not reach the kernel
        km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "JUPYTER_"))}
        if self.sandbox:
            km.wrap = lambda argv: box_argv(argv, str(self.scratch), str(self.sockets), self.limits)
        else:
            root = repo_root()
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root) if root else "", env.get("PYTHONPATH", "")) if p)
            env["HOME"] = env["TMPDIR"] = str(self.scratch)
            env["IPYTHONDIR"] = str(self.scratch / ".ipython")
            env["MOE_LAB_PREWARM"] = "0"  # as in the sandbox: no background forkserver per graded kernel
        self.km = km
        km.start_kernel(cwd=str(self.scratch), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True)
        self._pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
        self.kc = km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=timeout)
        except RuntimeError as e:
            raise RuntimeError(f"the kernel did not start: {e}") from None

    def alive(self) -> bool:
        return self.km is not None and self.km.is_alive()

    def execute(self, code: str, timeout: float) -> Run:
        """Run `code`; collect its printed output (capped) until the kernel is idle again."""
        if not self.alive():
            return Run("dead", "the kernel died")
        msg_id = self.kc.execute(code, store_history=False, allow_stdin=False, stop_on_error=False)
        deadline = time.monotonic() + max(0.0, timeout)
        out, size, cut = [], 0, False
        error, reply, idle, interrupted = None, None, False, False
        while not (reply is not None and idle):
            left = deadline - time.monotonic()
            if left <= 0:
                if interrupted:  # the interrupt went unanswered: stop this kernel, nothing more runs in it
                    self._stop()
                    return Run("timeout", f"timed out after {timeout:.3g} s and ignored the interrupt "
                               "(the kernel was stopped)", "".join(out))
                self._interrupt()
                interrupted, deadline = True, time.monotonic() + 5.0
                continue
            if not self.alive():
                return Run("dead", "the kernel died", "".join(out))
            got = False
            try:
                msg = self.kc.get_iopub_msg(timeout=min(0.2, left))
                got = True
            except queue.Empty:
                pass
            if got and msg.get("parent_header", {}).get("msg_id") == msg_id:
                kind, content = msg["msg_type"], msg["content"]
                text = ""
                if kind == "stream":
                    text = content.get("text", "")
                elif kind in ("execute_result", "display_data"):
                    text = str(content.get("data", {}).get("text/plain", "")) + "\n"
                elif kind == "error":
                    error = content
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
                if text and not cut:
                    if size + len(text) > OUTPUT_CAP:
                        text, cut = text[: OUTPUT_CAP - size] + TRUNCATED, True
                    out.append(text)
                    size += len(text)
            if reply is None:
                try:
                    r = self.kc.get_shell_msg(timeout=0)
                    if r.get("parent_header", {}).get("msg_id") == msg_id:
                        reply = r["content"]
                except queue.Empty:
                    pass
        printed = "".join(out)
        if interrupted:
            return Run("timeout", f"timed out after {timeout:.3g} s", printed)
        if reply.get("status") != "ok" or error:
            err = error or reply
            first = f"{err.get('ename', 'Error')}: {err.get('evalue', '')}".strip().splitlines() or [""]
            return Run("error", first[0][:300], printed)
        return Run("ok", "", printed)

    def _interrupt(self) -> None:
        try:
            self.km.interrupt_kernel()
        except Exception:
            pass

    def _stop(self) -> None:
        try:
            self.km.shutdown_kernel(now=True)
        except Exception:
            pass
        if self._pgid and self._pgid != os.getpgrp():
            try:
                os.killpg(self._pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Kill the box (and so every process in it), then remove its folders."""
        try:
            if self.kc is not None:
                self.kc.stop_channels()
        except Exception:
            pass
        if self.km is not None:
            self._stop()  # shuts the kernel down if it still runs, then kills its whole process group
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

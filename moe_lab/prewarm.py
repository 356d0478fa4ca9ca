"""The ranks' forkserver, started in the background the moment `moe_lab` is imported.

Every rank of a `Cluster` is forked from multiprocessing's forkserver, which imports torch,
torch.distributed and the layer once (its preload) so that no rank imports them itself. That
import is most of a first `Cluster(8)`'s wait (about a second on 2 cores). A notebook's first cell
is usually its imports, so `import moe_lab` starts the forkserver on a background thread: it
imports torch while the notebook does the same, and is ready (or nearly) by the time a cell makes
a Cluster. Nothing here imports torch, so `import moe_lab` pays only a thread start.

No process is left behind: the forkserver exits when this process does (its pipe to us closes;
`atexit` also stops it at once, even in the middle of its preload). Set `MOE_LAB_PREWARM=0` to
start it only when the first Cluster is made, as multiprocessing does by default.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import sys
import threading

# Imported once by the forkserver, so each rank starts with them loaded. Not torch._dynamo (1.6 s,
# as long as torch itself): nothing on a rank imports it, since training steps with moe_lab.adam
# rather than torch.optim, whose step() would (tests/test_train.py checks a rank after training).
PRELOAD = ["torch", "torch.distributed", "moe_lab.cluster", "moe_lab.layer"]

_thread: threading.Thread | None = None


def forkserver_context():
    """torch.multiprocessing's forkserver context with the preload set (torch's tensor
    reductions are registered by importing it, on whichever side pickles a tensor)."""
    ctx = mp.get_context("forkserver")  # torch.multiprocessing.get_context is this same function
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def ensure_forkserver() -> None:
    """Start the forkserver with its preload now (a no-op when it runs already)."""
    from multiprocessing import forkserver

    forkserver_context()
    forkserver.ensure_running()


def forkserver_pid() -> int | None:
    """The running forkserver's process id, or None."""
    fs = sys.modules.get("multiprocessing.forkserver")
    return getattr(getattr(fs, "_forkserver", None), "_forkserver_pid", None)


def should_prewarm() -> bool:
    """Only in a process that drives ranks: not in a rank, not in the forkserver's own preload,
    not under torchrun (each torchrun process is a rank), not when switched off."""
    if os.environ.get("MOE_LAB_PREWARM", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "forkserver" not in mp.get_all_start_methods() or mp.parent_process() is not None:
        return False
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return False
    frame = sys._getframe()
    while frame is not None:  # imported by a forkserver's preload (ours): never start another
        if frame.f_code.co_filename.endswith(os.path.join("multiprocessing", "forkserver.py")):
            return False
        frame = frame.f_back
    return True


def start_in_background() -> threading.Thread | None:
    """Start the forkserver on a daemon thread (once per process); None when not wanted here."""
    global _thread
    if _thread is not None or not should_prewarm():
        return _thread
    import multiprocessing.forkserver  # noqa: F401 - imported here, so the thread imports nothing

    _thread = threading.Thread(target=_run, name="moe_lab-prewarm", daemon=True)
    atexit.register(_stop_forkserver)
    _thread.start()
    return _thread


def wait(timeout: float | None = None) -> None:
    """Block until the background start has handed the forkserver its work (tests use it)."""
    if _thread is not None:
        _thread.join(timeout)


def _run() -> None:
    try:
        ensure_forkserver()
    except Exception:  # noqa: BLE001 - e.g. a sandbox without fork: the first Cluster tries again
        pass


def _stop_forkserver() -> None:
    """At exit: stop the forkserver now instead of after it finishes importing torch.
    (Cluster ranks are killed by their own finalizers; they also exit when their parent goes.)"""
    pid = forkserver_pid()
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass

"""The box a submission's kernel runs in: bubblewrap (`bwrap`) namespaces plus rlimits (`prlimit`).

Why a box: a kernel runs whatever the student wrote. Without one it runs as the grader's user, sees
solutions/ (the hidden checks), other submissions and the score file, can signal the grader and
outlive it. Inside the box the kernel gets

    its own PID namespace   sees and signals only its own processes; when the box's first process
                            dies the kernel kills every process left in it (a `start_new_session`
                            child included), and the box dies with the grader (--die-with-parent)
    no network              its own network namespace: only loopback, which gloo still uses
    read-only system        /usr, /etc and the Python installation with its packages, read-only;
                            this copy of moe_lab at PACKAGE_MOUNT, nothing else of the checkout
    a fresh scratch folder  the kernel's cwd, HOME, TMPDIR and IPython profile: empty, writable,
                            deleted afterwards, so no startup file reaches another kernel
    limits                  address space (--memory), processes, file size, CPU seconds

The kernel talks to the grader over ZeroMQ `ipc` sockets: unix sockets in a folder bound into the
box, because a TCP port on the grader's loopback is out of reach of a box with its own network.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..paths import PACKAGE_DIR

PACKAGE_MOUNT = "/opt/moe_lab"  # where the box sees this copy of the package (PYTHONPATH)
SCRATCH = "/tmp/work"  # the kernel's cwd, HOME and TMPDIR inside the box
_SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/opt/conda")


class SandboxUnavailable(RuntimeError):
    """No box can be made here: say why, and that `--unsafe` grades without one."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 4 << 30  # address space per process (RLIMIT_AS)
    processes: int = 256  # RLIMIT_NPROC (counts per user; not enforced for root, the PID namespace still holds)
    file_bytes: int = 256 << 20  # largest file a kernel may write (RLIMIT_FSIZE)
    cpu_seconds: int = 900  # CPU time per process (RLIMIT_CPU)


def _python_dirs() -> list[str]:
    """The interpreter and its packages, wherever they live (a venv in a checkout, pyenv in HOME)."""
    import site
    import sysconfig

    dirs = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        dirs.add(sysconfig.get_paths()[key])
    dirs.update(p for p in site.getsitepackages() if p)
    dirs = {os.path.realpath(d) for d in dirs if d and os.path.isdir(d)}
    dirs |= {d for d in (sys.prefix, sys.base_prefix) if os.path.isdir(d)}  # symlinked prefixes too
    # a venv inside a checkout: bind the venv, not the checkout around it
    return sorted(d for d in dirs if not any(d != o and d.startswith(o + os.sep) for o in dirs))


def box_argv(command: list[str], scratch: str, sockets: str, limits: Limits) -> list[str]:
    """`command`, run inside a new box: scratch bound at SCRATCH, the socket folder at its own path."""
    argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "grading"]
    for d in _SYSTEM:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for d in _python_dirs():
        argv += ["--ro-bind", d, d]
    argv += ["--ro-bind", str(PACKAGE_DIR), f"{PACKAGE_MOUNT}/moe_lab",
             "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm",
             "--bind", scratch, SCRATCH, "--bind", sockets, sockets, "--chdir", SCRATCH,
             "--clearenv", "--setenv", "HOME", SCRATCH, "--setenv", "TMPDIR", SCRATCH,
             "--setenv", "PATH", f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
             "--setenv", "PYTHONPATH", PACKAGE_MOUNT, "--setenv", "IPYTHONDIR", f"{SCRATCH}/.ipython",
             "--setenv", "MPLCONFIGDIR", f"{SCRATCH}/.mpl", "--setenv", "OMP_WAIT_POLICY", "PASSIVE",
             "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYDEVD_DISABLE_FILE_VALIDATION", "1",
             # no background forkserver per graded kernel: a Cluster the notebook makes starts its own
             "--setenv", "MOE_LAB_PREWARM", "0", "--",
             "prlimit", f"--as={limits.memory_bytes}", f"--nproc={limits.processes}",
             f"--fsize={limits.file_bytes}", f"--cpu={limits.cpu_seconds}", "--core=0", "--"]
    return argv + list(command)


@functools.lru_cache(maxsize=1)
def why_no_sandbox() -> str | None:
    """None when a box can be made here; else the reason, in words an instructor can act on."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces; this is {sys.platform}"
    for tool, package in (("bwrap", "bubblewrap"), ("prlimit", "util-linux")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package `{package}`; `make grader-deps` installs it)"
    probe = Path(tempfile.mkdtemp(prefix="mlg-probe-"))
    (probe / "s").mkdir()
    argv = box_argv([sys.executable, "-c", "import os; print(os.getpid())"], str(probe / "s"), str(probe), Limits())
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not start: {e}"
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if proc.returncode != 0 or proc.stdout.strip() not in ("1", "2"):
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return f"bwrap cannot make namespaces here ({detail}); it needs root or unprivileged user namespaces"
    return None

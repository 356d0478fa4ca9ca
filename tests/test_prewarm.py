"""Importing moe_lab starts the ranks' forkserver in the background, and nothing outlives the process.

Each case runs a fresh interpreter with a unique marker in its environment; every process it
starts (the forkserver, multiprocessing's resource tracker, the ranks) inherits the marker, so
after the interpreter exits a scan of /proc finds any survivor, wherever it was reparented.
"""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")


def _with_marker(marker: str) -> list:
    """Live processes whose environment holds the marker (zombies have none, so they do not count)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def _run(code: str, prewarm: str | None = None) -> tuple:
    marker = f"moe_lab_test_{uuid.uuid4().hex}"
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, MOE_LAB_TEST_MARKER=marker)
    env.pop("MOE_LAB_PREWARM", None)
    if prewarm is not None:
        env["MOE_LAB_PREWARM"] = prewarm
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, marker


def _survivors_after(marker: str, seconds: float = 10.0) -> list:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _with_marker(marker):
            return []
        time.sleep(0.1)
    return _with_marker(marker)


def test_import_starts_the_forkserver_and_exit_leaves_no_process():
    out, marker = _run("import moe_lab\nfrom moe_lab import prewarm\nprewarm.wait(60)\n"
                       "print(prewarm.forkserver_pid())\n")
    assert out.strip().isdigit(), f"import did not start a forkserver: {out!r}"
    assert _survivors_after(marker) == []


def test_exit_right_after_import_leaves_no_process():
    # the forkserver may still be importing torch when the interpreter leaves
    _, marker = _run("import moe_lab\n")
    assert _survivors_after(marker) == []


def test_a_cluster_left_open_at_exit_leaves_no_process():
    out, marker = _run("import moe_lab\nfrom moe_lab import Cluster, MoEConfig\nc = Cluster(2, timeout=120)\n"
                       "c.step(MoEConfig(num_experts=2), tokens_per_rank=16)\nprint(sorted(p.pid for p in c._procs))\n")
    assert len(out.strip().strip("[]").split(",")) == 2
    assert _survivors_after(marker) == []


def test_prewarm_can_be_switched_off():
    out, marker = _run("import moe_lab\nfrom moe_lab import prewarm\nprint(prewarm._thread, prewarm.forkserver_pid())\n",
                       prewarm="0")
    assert out.split() == ["None", "None"]
    assert _survivors_after(marker) == []


def test_ranks_and_the_forkserver_never_prewarm_again():
    out, _ = _run("import moe_lab\nfrom moe_lab import Cluster\nfrom rank_fns import prewarm_state\n"
                  "with Cluster(2, timeout=120) as c:\n    print(c.run(prewarm_state))\n")
    # inside a rank: no thread of its own, and the forkserver it came from started none either
    assert out.strip() == "[(None, False), (None, False)]"

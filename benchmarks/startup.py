"""Startup section: how long a notebook waits for its ranks, measured in fresh processes.

A cold start is only cold in a process that has never started ranks: the first Cluster in a
process also starts multiprocessing's forkserver, which imports torch, torch.distributed and
moe_lab once (the preload) so every rank forked from it starts with them already imported.
So each sample runs in a new Python process (`python -c ...`), which imports moe_lab (as a
notebook does before it makes a Cluster, torch comes with it), then times:
  cold start    Cluster(W) -- forkserver + preload + W ranks + process group
  first step    the first Cluster.step (64 tokens per rank; then checked against the reference)
  close         Cluster.close()
  second start  another Cluster(W) in the same process (the forkserver is warm now)
  second close
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import record

MARK = "BENCH_STARTUP_RESULT "
CHECK_TOKENS = 64


def _child(world_size: int, t0: float) -> dict:
    """Runs in the fresh process; t0 was taken there before `import moe_lab`."""
    import moe_lab  # noqa: F401 - what a notebook imports first (torch comes with it)
    from moe_lab.cluster import Cluster

    t1 = time.perf_counter()
    from benchmarks.common import verify_step  # the check's own imports stay out of both timings
    from benchmarks.fairscale_peer import peer_config

    t_start = time.perf_counter()
    cluster = Cluster(world_size, timeout=120)
    t2 = time.perf_counter()
    cfg = peer_config(world_size)
    cluster.step(cfg, CHECK_TOKENS)
    t3 = time.perf_counter()
    verified = verify_step(cluster, cfg, CHECK_TOKENS, backward=False)
    t3b = time.perf_counter()
    cluster.close()
    t4 = time.perf_counter()
    second = Cluster(world_size, timeout=120)
    t5 = time.perf_counter()
    second.close()
    t6 = time.perf_counter()
    return dict(import_s=t1 - t0, cold_start_s=t2 - t_start, first_step_s=t3 - t2, close_s=t4 - t3b,
                second_start_s=t5 - t4, second_close_s=t6 - t5, check=verified)


def _run_child(world_size: int, timeout: float = 300.0) -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import time; t0 = time.perf_counter(); import json\n"
            "from benchmarks.startup import MARK, _child\n"
            f"print(MARK + json.dumps(_child({int(world_size)}, t0)), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, cwd=root)
    for line in out.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"startup probe failed (exit {out.returncode}):\n{out.stderr[-3000:]}")


def section_startup(bc) -> dict:
    P = bc.world_size
    n = bc.reps(1, 5)
    bar = bc.progress(n, "startup")
    samples = []
    for _ in range(n):
        samples.append(_run_child(P))
        bar.update(1)
    bar.close()
    params = dict(world_size=P)
    ok = all(s["check"]["matched_reference"] for s in samples)
    worst = max(s["check"]["max_err"] for s in samples)
    checked = dict(matched_reference=ok, max_err=worst, errors=dict(first_step_vs_reference=worst))
    names = [("import moe_lab (torch)", "import_s"), ("cold start (first Cluster in the process)", "cold_start_s"),
             ("first step after start", "first_step_s"), ("close", "close_s"),
             ("second start (same process)", "second_start_s"), ("second close", "second_close_s")]
    records = [record(label, [s[key] for s in samples], params, **checked) for label, key in names]
    return dict(status="ok", records=records, ratios=[
        dict(name="cold start / second start", params=params, value=records[1]["median"] / records[4]["median"],
             meaning="what the forkserver preload saves every later Cluster")],
        notes=["each sample is a fresh Python process (so the first Cluster is really the first)",
               "the cold start includes starting multiprocessing's forkserver, whose preload imports torch, "
               "torch.distributed and moe_lab once for every rank",
               f"the first step is one Cluster.step of {CHECK_TOKENS} tokens per rank (builds the layer on every rank); "
               "its output is then checked against the reference"])


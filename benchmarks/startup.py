"""Startup section: how long a notebook waits for its ranks, measured in fresh processes.

A cold start is only cold in a process that has never started ranks: every rank is forked from
multiprocessing's forkserver, which imports torch, torch.distributed and moe_lab once (the
preload). `import moe_lab` starts that forkserver in the background (moe_lab/prewarm.py), so
each sample runs in a new Python process (`python -c ...`), which imports moe_lab (as a notebook
does before it makes a Cluster), optionally waits (a notebook's next cell comes later), then times:
  cold start    Cluster(W) -- (the rest of) forkserver + preload, W ranks, process group
  first step    the first Cluster.step (64 tokens per rank; then checked against the reference)
  close         Cluster.close()
  second start  another Cluster(W) in the same process (the forkserver is warm now)
  second close
Three kinds of process, interleaved: prewarm on with the Cluster made right after the import,
prewarm on with the Cluster made 3 s after it, and prewarm off (MOE_LAB_PREWARM=0: the forkserver
starts with the first Cluster, as before), which also shows what the prewarm costs the import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import ratio, record

MARK = "BENCH_STARTUP_RESULT "
CHECK_TOKENS = 64


MODES = {"right_after": ("1", 0.0), "after_3s": ("1", 3.0), "off": ("0", 0.0)}
LABELS = {"right_after": "prewarm on, Cluster right after import", "after_3s": "prewarm on, Cluster 3 s after import",
          "off": "prewarm off (MOE_LAB_PREWARM=0)"}


def _child(world_size: int, t0: float, delay: float = 0.0) -> dict:
    """Runs in the fresh process; t0 was taken there before `import moe_lab`."""
    import moe_lab  # noqa: F401 - what a notebook imports first (torch comes with it)
    from moe_lab.cluster import Cluster

    t1 = time.perf_counter()
    from benchmarks.common import verify_step  # the check's own imports stay out of both timings
    from benchmarks.fairscale_peer import peer_config

    time.sleep(max(0.0, delay - (time.perf_counter() - t1)))  # the notebook's next cell
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


def _run_child(world_size: int, mode: str = "right_after", timeout: float = 300.0) -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    prewarm, delay = MODES[mode]
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), MOE_LAB_PREWARM=prewarm)
    code = ("import time; t0 = time.perf_counter(); import json\n"
            "import moe_lab\n"  # first, as a notebook does (benchmarks.startup imports nothing heavy)
            "from benchmarks.startup import MARK, _child\n"
            f"print(MARK + json.dumps(_child({int(world_size)}, t0, {float(delay)})), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, cwd=root)
    for line in out.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"startup probe failed (exit {out.returncode}):\n{out.stderr[-3000:]}")


def section_startup(bc) -> dict:
    P = bc.world_size
    n = bc.reps(1, 5)
    modes = list(MODES)
    bar = bc.progress(n * len(modes), "startup")
    samples = {m: [] for m in modes}
    for rep in range(n):
        for mode in (modes if rep % 2 == 0 else modes[::-1]):
            samples[mode].append(_run_child(P, mode))
            bar.update(1)
    bar.close()
    every = [s for m in modes for s in samples[m]]
    ok = all(s["check"]["matched_reference"] for s in every)
    worst = max(s["check"]["max_err"] for s in every)
    checked = dict(matched_reference=ok, max_err=worst, errors=dict(first_step_vs_reference=worst))
    records = []
    for mode in modes:
        params = dict(world_size=P, prewarm=MODES[mode][0] == "1", delay_after_import_s=MODES[mode][1])
        got = samples[mode]
        records += [record(f"cold start, {LABELS[mode]}", [s["cold_start_s"] for s in got], params, **checked),
                    record(f"import moe_lab, {LABELS[mode]}", [s["import_s"] for s in got], params, **checked),
                    record(f"first step after start, {LABELS[mode]}", [s["first_step_s"] for s in got], params, **checked),
                    record(f"close, {LABELS[mode]}", [s["close_s"] for s in got], params, **checked),
                    record(f"second start (same process), {LABELS[mode]}", [s["second_start_s"] for s in got], params,
                           **checked)]
    by = {r["contender"]: r for r in records}
    cold = {m: by[f"cold start, {LABELS[m]}"] for m in modes}
    imp = {m: by[f"import moe_lab, {LABELS[m]}"] for m in modes}
    params = dict(world_size=P)
    ratios = [dict(name="cold start without / with prewarm (right after import)", params=params,
                   value=ratio(cold["off"], cold["right_after"]), meaning="what starting the forkserver at import saves"),
              dict(name="import moe_lab with / without prewarm", params=params, value=ratio(imp["right_after"], imp["off"]),
                   meaning="what the background start costs the import itself (1 = nothing)"),
              dict(name="cold start / second start (prewarm off)", params=params,
                   value=ratio(cold["off"], by[f"second start (same process), {LABELS['off']}"]),
                   meaning="what the forkserver preload saves every later Cluster")]
    return dict(status="ok", records=records, ratios=ratios, notes=[
        "each sample is a fresh Python process (so the first Cluster is really the first); the three kinds of "
        "process are interleaved",
        "prewarm on: `import moe_lab` starts the forkserver (preload: torch, torch.distributed, moe_lab) on a "
        "background thread; off: the first Cluster starts it",
        f"the first step is one Cluster.step of {CHECK_TOKENS} tokens per rank (builds the layer on every rank); "
        "its output is then checked against the reference"])

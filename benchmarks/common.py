"""Shared pieces of the benchmark suite: statistics, machine facts, records and reference checks.

Every timed number in the suite is a list of raw samples; a record keeps them all and adds the
median and the spread (p10 / p90 and the interquartile range). Every contender is also checked
against the single-process reference (`moe_lab.reference.moe_forward`) before its time means
anything: a record says `matched_reference` and the largest relative error it saw.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys

import numpy as np

# Relative error (max |a - b| / max |ref|) under which two runs count as the same numbers.
TOLERANCE = 1e-4


def summarize(samples) -> dict:
    """median, p10, p90, q25, q75, min, max and n of a list of seconds (or any numbers)."""
    a = np.asarray(list(samples), dtype=float)
    if a.size == 0:
        return dict(n=0, median=None, p10=None, p90=None, q25=None, q75=None, min=None, max=None)
    q = np.percentile(a, [10, 25, 50, 75, 90])
    return dict(n=int(a.size), median=float(q[2]), p10=float(q[0]), p90=float(q[4]), q25=float(q[1]),
                q75=float(q[3]), min=float(a.min()), max=float(a.max()))


def record(contender: str, samples, params: dict | None = None, unit: str = "s", **extra) -> dict:
    """One contender at one setting: every raw sample plus its summary statistics."""
    rec = dict(contender=contender, params=dict(params or {}), unit=unit, samples=[float(s) for s in samples])
    rec.update(summarize(rec["samples"]))
    rec.update(extra)
    return rec


def ratio(num: dict, den: dict) -> float | None:
    """Ratio of two records' medians (None when either is missing or zero)."""
    a, b = num.get("median"), den.get("median")
    return None if a is None or not b else float(a) / float(b)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def memory_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict:
    import torch

    info = dict(platform=platform.platform(), machine=platform.machine(), processor=platform.processor() or None,
                python=sys.version.split()[0], cores=cores(), cpu_count=os.cpu_count(), torch=torch.__version__,
                torch_threads_parent=torch.get_num_threads(), date=_dt.datetime.now().astimezone().isoformat(),
                load_average_start=load_average(), memory_available_bytes=memory_available_bytes())
    for name in ("numpy", "plotly", "fairscale"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional packages
            info[name] = None
    return info


# ---- checks against the reference ------------------------------------------------------------
def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| (0 when both are empty or ref is all zeros and got equals it)."""
    import torch

    got, ref = torch.as_tensor(got).double(), torch.as_tensor(ref).double()
    if got.shape != ref.shape:
        return float("inf")
    if ref.numel() == 0:
        return 0.0
    diff = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    return diff / scale if scale > 0 else diff


def check(errors: dict, tol: float = TOLERANCE) -> dict:
    """{name: relative error} -> fields for a record: matched_reference, max_err, errors."""
    worst = max(errors.values()) if errors else 0.0
    return dict(matched_reference=bool(worst <= tol), max_err=float(worst), errors={k: float(v) for k, v in errors.items()})


def verify_step(cluster, cfg, tokens_per_rank: int, backward: bool, skew: float = 0.0) -> dict:
    """Run `step_on_rank` with tensors on every rank and compare with `reference_step`."""
    import torch

    from moe_lab.step import reference_step, step_on_rank

    parts = cluster.run(step_on_rank, cfg, tokens_per_rank, skew, backward, True)
    y_ref, grads_ref, info = reference_step(cfg, cluster.world_size, tokens_per_rank, backward, skew)
    errors = {"y": rel_err(torch.cat([t["y"] for _, t in parts]), y_ref)}
    if backward:
        got = dict(x_grad=torch.cat([t["x_grad"] for _, t in parts]), router_grad=parts[0][1]["router_grad"],
                   w_in_grad=torch.cat([t["w_in_grad"] for _, t in parts]),
                   w_out_grad=torch.cat([t["w_out_grad"] for _, t in parts]))
        errors.update({name: rel_err(got[name], ref) for name, ref in grads_ref.items()})
    used = torch.cat([torch.from_numpy(tr.used) for tr, _ in parts])
    errors["routing_mismatches"] = float((used != info["used"]).sum())
    return check(errors)


def trace_matches_reference(trace, cfg, skew: float = 0.0) -> dict:
    """A StepTrace's routing tables (expert used, slot) against the reference's, entry by entry."""
    import torch

    from moe_lab.step import reference_step

    _, _, info = reference_step(cfg, trace.world_size, trace.tokens_per_rank, False, skew)
    P, N, k = trace.used.shape
    bad = sum(int((torch.from_numpy(getattr(trace, key)).reshape(P * N, k) != info[key]).sum()) for key in ("used", "slot"))
    return check({"routing_mismatches": float(bad)}, tol=0.0)


def phase_stats(traces, phases) -> dict:
    """Per phase, the max over ranks and the mean over ranks of every sample (raw lists).

    "total" is each rank's whole step (forward, plus backward when there is one); "other" is
    what the named phases leave of it (the local gate-weighted sum, and the backward pass).
    """
    out = {}
    for ph in (*phases, "other", "total"):
        vals = []
        for t in traces:
            if ph == "total":
                v = np.asarray(t.rank_time_s)
            elif ph == "other":
                v = np.asarray(t.rank_time_s) - sum(np.asarray(t.phase_time_s[p]) for p in phases)
            else:
                v = np.asarray(t.phase_time_s[ph])
            vals.append(v)
        out[ph] = dict(max_over_ranks=[float(v.max()) for v in vals], mean_over_ranks=[float(v.mean()) for v in vals])
        out[ph]["median_max"] = float(np.median(out[ph]["max_over_ranks"])) if vals else None
        out[ph]["median_mean"] = float(np.median(out[ph]["mean_over_ranks"])) if vals else None
    return out

"""Benchmark sections that time `Cluster.step` as a user calls it: interactivity, floor, ragged vs padded.

Each section gets the suite's context `bc` (world size, quick or full, the shared persistent
Cluster, repetition counts and a progress bar) and returns a dict with its `records` (every raw
sample plus median and spread, each checked against the reference), `ratios` and `notes`.
Contenders are interleaved rep by rep (and their order alternated) so that a burst of other
work on the machine hits all of them alike.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .common import check, phase_stats, ratio, record, trace_matches_reference, verify_step
from moe_lab.config import MoEConfig
from moe_lab.trace import PHASES

STEP_TOKENS = 512
FLOOR_SIZES = (512, 2048, 8192)
CAPACITY_FACTORS = (1.0, 1.25, 2.0, 4.0)
MODES = (("fwd", False), ("fwd+bwd", True))


def base_config(world_size: int, **changes) -> MoEConfig:
    """The course's layer (top-2, d=64, hidden 256, capacity factor 1.25) with one expert per rank."""
    return MoEConfig(num_experts=world_size, **changes)


def _interleave(rep: int, items):
    return list(items) if rep % 2 == 0 else list(reversed(items))


# ---- interactivity --------------------------------------------------------------------------------
def section_interactivity(bc) -> dict:
    from moe_lab.cluster import Cluster

    P, N = bc.world_size, STEP_TOKENS
    cfg = base_config(P)
    cluster = bc.cluster
    params = dict(world_size=P, tokens_per_rank=N, mode="fwd")
    rounds, steps_per_round = bc.reps(2, 10), 5
    bar = bc.progress(rounds * (steps_per_round + 1) + 1 + bc.reps(1, 3) + bc.reps(6, 14), "interactivity")
    ours_check = verify_step(cluster, cfg, N, backward=False)
    respawn_check = None
    cluster.step(cfg, N)  # warm: the layer and the tokens are built on the ranks
    bar.update(1)
    from .ranks import bare_alltoalls

    sizes = (trace_counts(cluster.step(cfg, N)), cfg.d_model, cfg.num_experts)  # the step's own AlltoAll sizes
    floor_check = check({"rows_not_back": float(sum(cluster.run(bare_alltoalls, *sizes, True)))}, tol=0.0)
    step_s, step_rank_s, respawn_s, floor_s = [], [], [], []
    for rep in range(rounds):
        for which in _interleave(rep, ("step", "floor", "respawn")):
            if which == "floor":  # the transport alone, as often as the step, between its samples
                for _ in range(steps_per_round):
                    floor_s.append(max(cluster.run(bare_alltoalls, *sizes)))
            elif which == "step":
                for _ in range(steps_per_round):
                    t0 = time.perf_counter()
                    trace = cluster.step(cfg, N)
                    step_s.append(time.perf_counter() - t0)
                    step_rank_s.append(float(np.max(trace.rank_time_s)))
                    bar.update(1)
            else:  # the naive notebook cell: a new process group for every slider move
                t0 = time.perf_counter()
                fresh = Cluster(P, timeout=120)
                try:
                    fresh.step(cfg, N)
                    t1 = time.perf_counter()
                    if respawn_check is None:  # checked once, outside the timing
                        respawn_check = verify_step(fresh, cfg, N, backward=False)
                    t2 = time.perf_counter()
                finally:
                    fresh.close()
                respawn_s.append(time.perf_counter() - t2 + t1 - t0)
                bar.update(1)
    spawn_s, spawn_check = [], None
    for i in range(bc.reps(1, 3)):  # slow (every rank imports torch): fewer samples, after the others
        t, got = _spawn_once(P, cfg, N, check_result=i == 0)
        spawn_s.append(t)
        spawn_check = got or spawn_check
        bar.update(1)
    rec_step = record("Cluster.step round trip (persistent ranks)", step_s, params, max_rank_time_s=step_rank_s, **ours_check)
    rec_resp = record("respawn per step (start Cluster, step, close)", respawn_s, params, **respawn_check)
    rec_spawn = record("spawn per step (torch.multiprocessing.spawn, no preload)", spawn_s, params, **spawn_check)
    rec_floor = record("three bare gloo AlltoAlls, the step's sizes (max over ranks)", floor_s, params, **floor_check)
    records = [rec_step, rec_floor, rec_resp, rec_spawn]
    ratios = [dict(name="step round trip / three bare AlltoAlls", params=params, value=ratio(rec_step, rec_floor),
                   meaning="the step against its transport floor (count exchange, dispatch, combine alone)"),
              dict(name="step on the ranks (max over ranks) / three bare AlltoAlls", params=params,
                   value=float(np.median(step_rank_s)) / rec_floor["median"] if rec_floor["median"] else None,
                   meaning="the same without the notebook <-> ranks round trip"),dict(name="respawn / persistent step", params=params, value=ratio(rec_resp, rec_step),
                   meaning="how many times faster a slider move is with persistent ranks"),
              dict(name="spawn per step / persistent step", params=params, value=ratio(rec_spawn, rec_step),
                   meaning="against a fresh torch.multiprocessing.spawn group per step")]
    notes = [f"threads per rank: {cluster.threads}; the respawns reuse this process's warm forkserver (torch, "
             "torch.distributed and moe_lab already imported): the best case for respawning",
             "floor: the step's three AlltoAlls alone (count exchange, dispatch, combine with the step's own splits), "
             "timed on the ranks after a barrier, interleaved with the steps",
             "spawn per step: what a notebook without a persistent pool does; every rank imports torch itself"]
    pg = _playground(bc, cfg, N, bar)
    if pg.get("record"):
        records.append(pg["record"])
    notes += pg["notes"]
    bar.close()
    return dict(status="ok", records=records, ratios=ratios, notes=notes, playground_status=pg["status"])


def trace_counts(trace) -> list:
    """[P, P] rows rank i sends rank j at dispatch, as plain lists (what the bare AlltoAlls move)."""
    return [[int(v) for v in row] for row in np.asarray(trace.send_counts)]


def _spawn_once(P: int, cfg, N: int, check_result: bool = False):
    """The naive notebook without this library: torch.multiprocessing.spawn P fresh ranks for one
    step (each imports torch itself). Returns (seconds, check or None)."""
    import os
    import shutil
    import tempfile

    import torch.multiprocessing as tmp

    from moe_lab.step import reference_step

    from .common import rel_err
    from .ranks import spawned_step

    work = tempfile.mkdtemp(prefix="moe_lab_spawn_")
    try:
        t0 = time.perf_counter()
        tmp.start_processes(spawned_step, args=(P, os.path.join(work, "rendezvous"), work, cfg, N), nprocs=P,
                            join=True, start_method="spawn")
        elapsed = time.perf_counter() - t0
        if not check_result:
            return elapsed, None
        y = torch.cat([torch.load(os.path.join(work, f"y{r}.pt")) for r in range(P)])
        return elapsed, check({"y": rel_err(y, reference_step(cfg, P, N, False)[0])})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _figure_state(pg) -> list:
    """A fingerprint of every FigureWidget's traces (to see that a slider move redrew them)."""
    import hashlib

    import plotly.io as pio

    return [hashlib.sha1(pio.to_json(dict(data=fw.data), validate=False).encode()).hexdigest()
            for _, fw in sorted(pg.figures.items())]


def _playground(bc, cfg, N, bar) -> dict:
    """Set the skew slider of a real Playground headless; time until its FigureWidgets are redrawn."""
    try:
        from moe_lab.widgets import Playground
    except Exception as e:  # noqa: BLE001 - no ipywidgets / plotly: say so and go on
        return dict(status="skipped", notes=[f"Playground not measured: widgets not importable ({e})"])
    pg = Playground(bc.cluster, cfg=cfg, tokens_per_rank=N, skew=0.0)
    slider, values = pg.sliders["skew"], (0.0, 0.25)
    for v in (0.25, 0.0):  # warm both settings on the ranks
        slider.value = v
    total, step, updated = [], [], []
    for rep in range(bc.reps(4, 12)):
        target = values[1] if slider.value == values[0] else values[0]
        before_steps, before = pg.steps_run, _figure_state(pg)
        t0 = time.perf_counter()
        slider.value = target  # headless: the step and the redraw run before this returns
        total.append(time.perf_counter() - t0)
        step.append(pg.latency_s)
        updated.append(pg.steps_run == before_steps + 1 and _figure_state(pg) != before)
        bar.update(1)
    checked = check({})
    for v in values:
        slider.value = v
        got = trace_matches_reference(pg.trace, pg.settings()[0], v)
        checked = got if not got["matched_reference"] else checked
    checked = dict(checked, matched_reference=checked["matched_reference"] and all(updated))
    rec = record("Playground slider -> figures updated", total, dict(world_size=bc.world_size, tokens_per_rank=N,
                 slider="skew 0 <-> 0.25"), step_s=step, figures_updated=updated, **checked)
    rec["redraw_median_s"] = float(np.median(np.asarray(total) - np.asarray(step)))
    return dict(status="ok", record=rec, notes=[
        "slider time = setting .value until the step ran and the FigureWidgets were updated (headless, no browser "
        "rendering); step_s is the Cluster.step part of it"])


# ---- floor: 8 ranks against one process doing the same work ----------------------------------------
def _reference_runner(cfg, P, N):
    """A callable running the single-process reference on all P*N tokens, as the ranks do (grad on)."""
    from moe_lab.reference import moe_forward
    from moe_lab.workload import init_weights, make_tokens, upstream_grad

    weights = [w.clone().requires_grad_() for w in init_weights(cfg)]
    x0 = make_tokens(cfg, P, N, 0.0, weights[0].detach())
    g = upstream_grad(cfg, P, N)

    def run(backward: bool):
        for w in weights:
            w.grad = None
        x = x0.clone().requires_grad_(backward)
        y, info = moe_forward(x, *weights, cfg, world_size=P)
        if backward:
            ((y * g).sum() + info["aux_loss"].sum() + info["z_loss"].sum()).backward()
        return y

    return run


def section_floor(bc) -> dict:
    from .common import cores

    P, cluster = bc.world_size, bc.cluster
    cfg = base_config(P)
    sizes = bc.sizes(FLOOR_SIZES)
    reps = {512: bc.reps(3, 12), 2048: bc.reps(3, 8), 8192: bc.reps(2, 5)}
    thread_counts = sorted({1, cores()})  # the reference with one thread and with every core
    contenders = ["ours", *thread_counts]
    bar = bc.progress(sum(2 * (len(contenders) * reps[n] + 3) for n in sizes), "floor")
    records, ratios = [], []
    parent_threads = torch.get_num_threads()
    try:
        for N in sizes:
            ref = _reference_runner(cfg, P, N)
            for mode, backward in MODES:
                params = dict(world_size=P, tokens_per_rank=N, mode=mode)
                ours_check = verify_step(cluster, cfg, N, backward)
                cluster.step(cfg, N, backward=backward)
                for th in thread_counts:
                    torch.set_num_threads(th)
                    ref(backward)
                bar.update(3)
                times = {c: [] for c in contenders}
                traces = []
                for rep in range(reps[N]):
                    for c in _interleave(rep, contenders):
                        if c != "ours":
                            torch.set_num_threads(c)
                        t0 = time.perf_counter()
                        if c == "ours":
                            traces.append(cluster.step(cfg, N, backward=backward))
                        else:
                            ref(backward)
                        times[c].append(time.perf_counter() - t0)
                        bar.update(1)
                rec_o = record(f"{P}-rank Cluster.step", times["ours"], dict(params, threads_per_rank=cluster.threads),
                               phases=phase_stats(traces, PHASES), **ours_check)
                refs = [record(f"single-process reference, {th} thread{'s' if th > 1 else ''}", times[th],
                               dict(params, threads=th), **check({"is_the_reference": 0.0})) for th in thread_counts]
                records += [rec_o, *refs]
                best = min(refs, key=lambda r: r["median"])
                ratios.append(dict(name=f"{P}-rank step / single process, {mode}, N={N}", params=params,
                                   value=ratio(rec_o, best), against=best["contender"],
                                   meaning="against the faster single-process run; lower is better"))
                for r in refs:
                    th = r["params"]["threads"]
                    ratios.append(dict(name=f"{P}-rank step / single process ({th} thr), {mode}, N={N}",
                                       params=dict(params, threads=th), value=ratio(rec_o, r), against=r["contender"]))
    finally:
        torch.set_num_threads(parent_threads)
    bar.close()
    return dict(status="ok", records=records, ratios=ratios, notes=[
        f"ours: Cluster.step round trip ({P} ranks, {cluster.threads} thread(s) each); reference: "
        f"moe_lab.reference.moe_forward on all {P}*N tokens in this process, with 1 and with {cores()} threads; "
        "the headline ratio is against the faster of the two",
        "phases: each rank's RankTrace.times, max and mean over ranks per sample; 'other' = the rest of the "
        "rank's step (local gate-weighted sum, and backward in fwd+bwd)"])


# ---- ragged vs padded buffers ----------------------------------------------------------------------
def section_ragged_vs_padded(bc) -> dict:
    P, cluster = bc.world_size, bc.cluster
    N = bc.sizes((2048,))[0] if not bc.quick else STEP_TOKENS
    configs = [(cf, d) for cf in CAPACITY_FACTORS for d in ("ragged", "padded")]
    cfgs = {c: base_config(P, capacity_factor=c[0], dispatch=c[1]) for c in configs}
    n = bc.reps(3, 8)
    bar = bc.progress(len(configs) * (n + 2), "ragged_vs_padded")
    checks = {}
    for c in configs:
        checks[c] = verify_step(cluster, cfgs[c], N, backward=False)
        cluster.step(cfgs[c], N)
        bar.update(2)
    samples = {c: dict(t=[], dispatch=[], combine=[], trace=None) for c in configs}
    for rep in range(n):
        for c in _interleave(rep, configs):
            t0 = time.perf_counter()
            trace = cluster.step(cfgs[c], N)
            s = samples[c]
            s["t"].append(time.perf_counter() - t0)
            s["dispatch"].append(float(trace.phase_time_s["dispatch"].max()))
            s["combine"].append(float(trace.phase_time_s["combine"].max()))
            s["trace"] = trace
            bar.update(1)
    bar.close()
    records, ratios, identity = [], [], []
    for c in configs:
        tr, s = samples[c]["trace"], samples[c]
        recs = dict(bytes_sent=int(tr.bytes_sent.sum()), buffer_rows=int(tr.send_rows.sum()), used_rows=int(tr.kept.sum()),
                    capacity=tr.capacity, dropped=int(tr.dropped.sum()), dispatch_max_s=s["dispatch"], combine_max_s=s["combine"])
        records.append(record(f"{c[1]} dispatch", s["t"], dict(world_size=P, tokens_per_rank=N, capacity_factor=c[0],
                              dispatch=c[1], mode="fwd"), **recs, **checks[c]))
    by = {(r["params"]["capacity_factor"], r["params"]["dispatch"]): r for r in records}
    for cf in CAPACITY_FACTORS:
        rag, pad = by[(cf, "ragged")], by[(cf, "padded")]
        predicted = rag["bytes_sent"] * pad["buffer_rows"] / pad["used_rows"]
        identity.append(dict(capacity_factor=cf, padded_bytes=pad["bytes_sent"], ragged_bytes=rag["bytes_sent"],
                             padded_rows=pad["buffer_rows"], used_rows=pad["used_rows"],
                             ragged_bytes_x_padded_over_used=predicted, equal=bool(abs(predicted - pad["bytes_sent"]) < 1e-6)))
        ratios.append(dict(name=f"padded / ragged time, cf={cf:g}", params=dict(capacity_factor=cf, tokens_per_rank=N),
                           value=ratio(pad, rag), meaning="padding's cost in time"))
        ratios.append(dict(name=f"padded / ragged bytes, cf={cf:g}", params=dict(capacity_factor=cf, tokens_per_rank=N),
                           value=pad["bytes_sent"] / rag["bytes_sent"], meaning="padding's cost in bytes"))
    flat = {}
    for d in ("ragged", "padded"):
        lo, hi = by[(CAPACITY_FACTORS[0], d)], by[(CAPACITY_FACTORS[-1], d)]
        flat[d] = dict(time_cf_max_over_cf_min=ratio(hi, lo), bytes_cf_max_over_cf_min=hi["bytes_sent"] / lo["bytes_sent"])
    return dict(status="ok", records=records, ratios=ratios, bytes_identity=identity, growth=flat, notes=[
        "bytes = dispatch payload summed over ranks (StepTrace.bytes_sent; combine sends the same back)",
        "identity: padded bytes = ragged bytes x (padded buffer rows / used rows); ragged only grows with the "
        "assignments a larger capacity stops dropping"])

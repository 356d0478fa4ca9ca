"""Transport section: how close the MoE dispatch gets to what gloo and memory can move.

Per rank, the dispatch payload is N tokens x k = 2 copies x d = 64 floats (4 bytes). Three ways
to move it, timed on all ranks at once after a barrier (max over ranks), interleaved:
  alltoall   a bare equal-split `all_to_all_single` of that payload (no routing, no indexing)
  memcpy     a copy of it into a preallocated buffer on every rank (the memory's ceiling)
  dispatch   the dispatch phase of a real dropless Cluster.step (gather rows + ragged AlltoAll),
             and its combine phase, from the step's trace
And between the notebook and its ranks (`Cluster.run`), a [8192, 64] float tensor each way:
  results    every rank returns its [8192, 64] output: pickled by value (bytes through the pipe,
             what a plain pickle of the result costs) vs. the tensor itself, which Cluster sends
             through shared memory with torch.multiprocessing's tensor reductions
  arguments  one [8192, 64] tensor sent to every rank, pickled by value vs. shared memory
"""
from __future__ import annotations

import time

from .common import check, ratio, record, verify_step
from .ranks import rank_input, rank_output, transport_check, transport_probe
from .sections import _interleave, base_config

SIZES = (2048, 8192)
D, K, BYTES = 64, 2, 4


def section_transport(bc) -> dict:
    P, cluster = bc.world_size, bc.cluster
    sizes = bc.sizes(SIZES)
    n = bc.reps(4, 12)
    bar = bc.progress(len(sizes) * (3 * n + 4), "transport")
    records, ratios = [], []
    for N in sizes:
        rows = (N * K // P) * P  # equal splits need a multiple of the ranks
        payload = rows * D * BYTES  # bytes per rank
        params = dict(world_size=P, tokens_per_rank=N, k=K, d_model=D, payload_bytes_per_rank=payload)
        bad = cluster.run(transport_check, rows, D)
        raw_check = {w: check({"wrong_rows": float(sum(b[w] for b in bad))}, tol=0.0) for w in ("alltoall", "memcpy")}
        cfg = base_config(P, capacity_factor=None)  # dropless: every one of the N*k copies travels
        step_check = verify_step(cluster, cfg, N, backward=False)
        for what in ("alltoall", "memcpy"):
            cluster.run(transport_probe, rows, D, what)
        cluster.step(cfg, N)
        bar.update(4)
        t = dict(alltoall=[], memcpy=[], dispatch=[], combine=[])
        for rep in range(n):
            for what in _interleave(rep, ("alltoall", "memcpy", "dispatch")):
                if what == "dispatch":
                    trace = cluster.step(cfg, N)
                    t["dispatch"].append(float(trace.phase_time_s["dispatch"].max()))
                    t["combine"].append(float(trace.phase_time_s["combine"].max()))
                else:
                    t[what].append(max(cluster.run(transport_probe, rows, D, what)))
                bar.update(1)
        recs = {}
        for what, label, checked in (("alltoall", "gloo all_to_all_single (equal splits)", raw_check["alltoall"]),
                                     ("memcpy", "memcpy into a preallocated buffer", raw_check["memcpy"]),
                                     ("dispatch", "MoE dispatch phase (gather + ragged AlltoAll)", step_check),
                                     ("combine", "MoE combine phase (ragged AlltoAll back)", step_check)):
            recs[what] = record(label, t[what], params, **checked)
            med = recs[what]["median"]
            recs[what]["aggregate_GB_per_s"] = P * payload / med / 1e9 if med else None
            records.append(recs[what])
        ratios += [dict(name=f"dispatch / bare alltoall, N={N}", params=params, value=ratio(recs["dispatch"], recs["alltoall"]),
                        meaning="1 = the dispatch costs no more than the transport itself"),
                   dict(name=f"bare alltoall / memcpy, N={N}", params=params, value=ratio(recs["alltoall"], recs["memcpy"]),
                        meaning="what going through gloo costs over copying the bytes")]
        ratios[-2]["dispatch_rows_per_rank"] = N * K
    got = _notebook_ranks(bc, n)
    records += got["records"]
    ratios += got["ratios"]
    bar.close()
    return dict(status="ok", records=records, ratios=ratios, notes=[
        "results / arguments: wall time of one Cluster.run in the notebook process, [8192, 64] float32 (2 MiB) per "
        "rank; by value = pickle.dumps bytes through the pipe, shared = the tensor itself (moe_lab.wire: storages "
        f">= 256 KiB go through shared memory)",
        "times are the max over ranks of each rank's own time, measured after a barrier",
        "aggregate GB/s = ranks x payload bytes per rank / median time",
        "the dispatch uses a dropless config so it moves exactly N*k rows per rank, like the bare AlltoAll"])


ROWS_NB = 8192


def _notebook_ranks(bc, n: int) -> dict:
    """A [8192, 64] tensor from every rank to the notebook, and one to every rank: by value vs shared."""
    import pickle

    import torch

    P, cluster = bc.world_size, bc.cluster
    params = dict(world_size=P, rows=ROWS_NB, d_model=D, bytes_per_rank=ROWS_NB * D * BYTES)
    expected = [(r * ROWS_NB + torch.arange(ROWS_NB, dtype=torch.float32)).unsqueeze(1).expand(ROWS_NB, D) for r in range(P)]
    x = torch.randn(ROWS_NB, D, generator=torch.Generator().manual_seed(0))
    x_sum = float(x.double().sum())

    def results(by_value: bool):
        out = cluster.run(rank_output, ROWS_NB, D, by_value)
        return [pickle.loads(b) for b in out] if by_value else out

    def arguments(by_value: bool):
        return cluster.run(rank_input, pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) if by_value else x)

    checks = {}
    for by_value in (True, False):
        got = results(by_value)
        wrong = sum(int((g != e).any(dim=1).sum()) for g, e in zip(got, expected))
        sums = arguments(by_value)
        checks[by_value] = (check({"wrong_rows": float(wrong)}, tol=0.0),
                            check({"sum_error": max(abs(s - x_sum) for s in sums) / max(abs(x_sum), 1.0)}))
    t = {(what, bv): [] for what in ("results", "arguments") for bv in (True, False)}
    for rep in range(n):
        for key in _interleave(rep, list(t)):
            fn = results if key[0] == "results" else arguments
            t0 = time.perf_counter()
            fn(key[1])
            t[key].append(time.perf_counter() - t0)
    recs = {}
    for (what, bv), samples in t.items():
        how = "pickled by value (before)" if bv else "shared memory, torch.multiprocessing reductions"
        label = (f"{P} ranks return [{ROWS_NB}, {D}] each: {how}" if what == "results"
                 else f"[{ROWS_NB}, {D}] argument to {P} ranks: {how}")
        recs[(what, bv)] = record(label, samples, dict(params, direction=what, by_value=bv),
                                  **checks[bv][0 if what == "results" else 1])
    ratios = [dict(name=f"{what}: by value / shared memory", params=dict(params, direction=what),
                   value=ratio(recs[(what, True)], recs[(what, False)]),
                   meaning="how many times faster the call is through shared memory") for what in ("results", "arguments")]
    return dict(records=list(recs.values()), ratios=ratios)

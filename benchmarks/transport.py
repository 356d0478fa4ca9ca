"""Transport section: how close the MoE dispatch gets to what gloo and memory can move.

Per rank, the dispatch payload is N tokens x k = 2 copies x d = 64 floats (4 bytes). Three ways
to move it, timed on all ranks at once after a barrier (max over ranks), interleaved:
  alltoall   a bare equal-split `all_to_all_single` of that payload (no routing, no indexing)
  memcpy     a copy of it into a preallocated buffer on every rank (the memory's ceiling)
  dispatch   the dispatch phase of a real dropless Cluster.step (gather rows + ragged AlltoAll),
             and its combine phase, from the step's trace
"""
from __future__ import annotations

import time

from .common import check, ratio, record, verify_step
from .ranks import transport_check, transport_probe
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
    bar.close()
    return dict(status="ok", records=records, ratios=ratios, notes=[
        "times are the max over ranks of each rank's own time, measured after a barrier",
        "aggregate GB/s = ranks x payload bytes per rank / median time",
        "the dispatch uses a dropless config so it moves exactly N*k rows per rank, like the bare AlltoAll"])

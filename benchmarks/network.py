"""Network section (chapter 7): 2 nodes, an EMULATED inter-node link 10x slower than the ranks' own.

The ranks' real AlltoAll is measured first (links.measure_link: latency per message, bandwidth);
the emulated inter-node link is that, 10x slower. Then, on the same tokens (512 per rank), one
forward step of each contender, interleaved rep by rep:
  flat            one AlltoAll over all ranks
  hierarchical    inside the node, then one message per other node
  node-limited    flat, every token's experts on at most M = 1 node
  node-dedup      send once per node (alltoall="node_dedup"): one row per (token, node) crosses,
                  forwarded to the experts inside the node; with and without M = 1
  flat, c = 4     flat with 4 pipelined chunks (overlap)
and, without the emulated link, flat and hierarchical. Every contender is checked against the
single-process reference. Reported: step time (max over ranks), inter-node messages and bytes
(summed over ranks, counted on the ranks), the share of the waiting that overlap hides, and
chapter 5's cost model (cost.inter_node_time) against the measured cost of the emulated link.
"""
from __future__ import annotations

import numpy as np
import torch

from .common import check, ratio, record, rel_err
from .sections import _interleave
from moe_lab.config import MoEConfig

TOKENS = 512
NODES = 2
SLOWER = 10.0


def _config(W, **kw) -> MoEConfig:
    """Top-2, dropless (every copy travels); one expert per rank, or two when a node has one rank
    (node-limited M = 1 needs k = 2 experts on a node)."""
    E = W if W // NODES >= 2 else 2 * W
    return MoEConfig(num_experts=E, k=2, capacity_factor=None, **kw)


def _verify(cluster, cfg, N) -> dict:
    from moe_lab.step import reference_step, step_on_rank

    cfg.check_nodes(cluster.world_size, cluster.nodes)  # bad input: a ValueError here, not on the ranks
    parts = cluster.run(step_on_rank, cfg, N, 0.0, False, True)
    y_ref, _, _ = reference_step(cfg, cluster.world_size, N, False, nodes=cluster.nodes)
    return check({"y": rel_err(torch.cat([t["y"] for _, t in parts]), y_ref)})


def _waiting(trace) -> float:
    """Mean over ranks of the time a rank sat blocked on a collective (emulated link included)."""
    W = trace.world_size
    return sum(e["end"] - e["start"] for e in trace.timeline if e["kind"] == "wait") / W


def section_network(bc) -> dict:
    from moe_lab import cost
    from moe_lab.cluster import Cluster
    from moe_lab.links import measure_link, slower
    from moe_lab.overlap import hidden_share

    W = bc.world_size
    if W % NODES or W < NODES:
        return dict(status="skipped", reason=f"needs a world size divisible by {NODES} nodes")
    N, G = TOKENS, W // NODES
    reps = bc.reps(3, 9)
    with Cluster(world_size=W, nodes=NODES, timeout=bc.cluster_timeout) as cluster:
        intra = measure_link(cluster, reps=bc.reps(5, 15))
        inter = slower(intra, SLOWER)
        contenders = {
            "flat": _config(W, inter_node=inter),
            "hierarchical": _config(W, inter_node=inter, alltoall="hierarchical"),
            "node-limited M=1": _config(W, inter_node=inter, max_nodes=1),
            "node-dedup": _config(W, inter_node=inter, alltoall="node_dedup"),
            "node-dedup + node-limited M=1": _config(W, inter_node=inter, alltoall="node_dedup", max_nodes=1),
            "flat, c=4": _config(W, inter_node=inter, chunks=4),
            "flat, no emulated link": _config(W),
            "hierarchical, no emulated link": _config(W, alltoall="hierarchical"),
            "node-dedup + node-limited M=1, no emulated link": _config(W, alltoall="node_dedup", max_nodes=1),
        }
        bar = bc.progress(len(contenders) * (reps + 2), "network")
        checks, times, traces = {}, {n: [] for n in contenders}, {n: [] for n in contenders}
        for name, cfg in contenders.items():
            checks[name] = _verify(cluster, cfg, N)
            cluster.step(cfg, N)  # warm: layer and tokens built on the ranks
            bar.update(2)
        for rep in range(reps):
            for name in _interleave(rep, list(contenders)):
                tr = cluster.step(contenders[name], N)
                times[name].append(float(tr.rank_time_s.max()))
                traces[name].append(tr)
                bar.update(1)
        bar.close()
    params = dict(world_size=W, nodes=NODES, tokens_per_rank=N, k=2, d_model=64,
                  emulated_inter_node=dict(bandwidth_GBps=inter.bandwidth_GBps, latency_us=inter.latency_us),
                  measured_intra=dict(bandwidth_GBps=intra.bandwidth_GBps, latency_us=intra.latency_us))
    records, link = [], {}
    for name in contenders:
        last = traces[name][-1]
        link[name] = {f"{t}_{what}": int(getattr(last, f"link_{what}")[t].sum())
                      for t in ("intra", "inter") for what in ("messages", "bytes")}
        records.append(record(name, times[name], dict(params, contender=name), **checks[name], links=link[name],
                              waiting_s=float(np.median([_waiting(t) for t in traces[name]]))))
    rec = {r["contender"]: r for r in records}
    hidden = {n: float(np.median([hidden_share(t) for t in traces[n]])) for n in ("flat", "flat, c=4")}
    # chapter 5's model of the emulated link: 3 AlltoAlls (counts, dispatch, combine) per forward
    model = {}
    for name, hier in (("flat", False), ("hierarchical", True)):
        pay = cost.inter_node_time(N, 64, 2, W, G, inter.bandwidth_GBps * 1e9, inter.latency_us * 1e-6, hier, 4)
        counts = cost.inter_node_time(1, 1, 1, W, G, inter.bandwidth_GBps * 1e9, inter.latency_us * 1e-6, hier, 8)
        model[name] = 2 * pay + counts
    measured = {"flat": rec["flat"]["median"] - rec["flat, no emulated link"]["median"],
                "hierarchical": rec["hierarchical"]["median"] - rec["hierarchical, no emulated link"]["median"]}
    ratios = [
        dict(name="hierarchical / flat step time (emulated link)", value=ratio(rec["hierarchical"], rec["flat"]),
             meaning="< 1: hierarchical is faster"),
        dict(name="inter-node messages flat : hierarchical", value=link["flat"]["inter_messages"] / max(link["hierarchical"]["inter_messages"], 1),
             flat=link["flat"]["inter_messages"], hierarchical=link["hierarchical"]["inter_messages"]),
        dict(name="inter-node bytes node-limited M=1 / unlimited", value=link["node-limited M=1"]["inter_bytes"] / link["flat"]["inter_bytes"],
             meaning="< 1: node-limited routing cuts inter-node bytes"),
    ] + [
        dict(name=f"inter-node bytes flat unlimited / {n}", value=link["flat"]["inter_bytes"] / link[n]["inter_bytes"],
             flat=link["flat"]["inter_bytes"], bytes=link[n]["inter_bytes"],
             messages=link[n]["inter_messages"], flat_messages=link["flat"]["inter_messages"],
             meaning="> 1: this many times fewer inter-node bytes than the flat AlltoAll with unlimited routing "
                     "(count exchange and send-once's routing metadata included)")
        for n in ("node-dedup", "node-dedup + node-limited M=1")
    ] + [
        dict(name="inter-node bytes node-dedup: node-limited M=1 / unlimited",
             value=link["node-dedup + node-limited M=1"]["inter_bytes"] / link["node-dedup"]["inter_bytes"],
             meaning="< 1: with send once per node, node-limited routing cuts inter-node bytes"),
        dict(name="node-dedup + node-limited M=1 / flat step time (emulated link)",
             value=ratio(rec["node-dedup + node-limited M=1"], rec["flat"]), meaning="< 1: faster"),
        dict(name="node-dedup + node-limited M=1 / flat step time (real links only)",
             value=ratio(rec["node-dedup + node-limited M=1, no emulated link"], rec["flat, no emulated link"]),
             meaning="the cost of send-once's 7 collectives per forward (flat: 3) where links are fast"),
        dict(name="emulated link cost, node-dedup + node-limited M=1 / flat", meaning="< 1: send once pays less for the slow link",
             value=(rec["node-dedup + node-limited M=1"]["median"] - rec["node-dedup + node-limited M=1, no emulated link"]["median"])
             / (rec["flat"]["median"] - rec["flat, no emulated link"]["median"])),
        dict(name="share of the communication hidden behind the experts, c=4", value=hidden["flat, c=4"],
             c1=hidden["flat"], waiting_c1_s=rec["flat"]["waiting_s"], waiting_c4_s=rec["flat, c=4"]["waiting_s"],
             meaning="1 - time blocked / time in flight, from the ranks' timestamps (c=1 for comparison)"),
        dict(name="flat, c=4 / flat step time", value=ratio(rec["flat, c=4"], rec["flat"])),
    ] + [dict(name=f"emulated link cost, {n}: measured / cost model", value=measured[n] / model[n] if model[n] else None,
              measured_s=measured[n], model_s=model[n]) for n in model]
    return dict(status="ok", records=records, ratios=ratios, params=params, notes=[
        "the inter-node link is EMULATED (a sleep per inter-node message: latency + bytes / bandwidth), "
        f"{SLOWER:g}x slower than the ranks' own AlltoAll measured in this run",
        "step time = max over ranks of one forward; links = what all ranks sent (forward, count exchange included)",
        "waiting = mean over ranks of the time blocked on collectives, from timestamps taken on the ranks"])

"""`python -m moe_lab demo`: one real expert-parallel step, printed for a terminal.

Two ways to get ranks, the same layer and the same numbers:
  python -m moe_lab demo --world-size 8                  # Cluster: ranks started by this process
  torchrun --standalone --nproc-per-node 4 -m moe_lab demo   # torchrun: env:// init, across nodes too
"""
from __future__ import annotations

import os

import numpy as np

from .config import MoEConfig


def add_parser(sub):
    p = sub.add_parser("demo", help="run one expert-parallel step and print where the tokens went")
    p.add_argument("--world-size", type=int, default=None, help="ranks to start (ignored under torchrun)")
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    p.add_argument("--experts", type=int, default=None, help="number of experts E (default: one per rank)")
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--capacity-factor", type=_cf, default=1.25, help="a number, or 'none' for dropless")
    p.add_argument("--policy", default="drop", choices=["drop", "overflow"])
    p.add_argument("--priority", default="position", choices=["position", "score"])
    p.add_argument("--dispatch", default="ragged", choices=["ragged", "padded"])
    p.add_argument("--tokens-per-rank", type=int, default=512)
    p.add_argument("--skew", type=float, default=0.0, help="share of tokens that want expert 0 (0..1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing", action="store_true", help="also print per-rank times (not deterministic)")
    p.set_defaults(func=run_demo)


def _cf(s):
    return None if s.lower() in ("none", "dropless") else float(s)


def run_demo(args) -> int:
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
    P = int(os.environ["WORLD_SIZE"]) if under_torchrun else (args.world_size or 8)
    cfg = MoEConfig(num_experts=args.experts or P, k=args.k, capacity_factor=args.capacity_factor,
                    policy=args.policy, priority=args.priority, dispatch=args.dispatch, seed=args.seed)
    cfg.check_world(P)
    if under_torchrun:
        trace = _torchrun_step(cfg, args)
        if trace is None:
            return 0  # only rank 0 prints
    else:
        from .cluster import Cluster

        with Cluster(world_size=P, backend=args.backend) as cluster:
            trace = cluster.step(cfg, args.tokens_per_rank, args.skew)
    print(report(trace, timing=args.timing))
    return 0


def torchrun_backend(requested: str, local_world_size: int) -> str:
    """The backend every rank of a node picks alike: NCCL needs a GPU for each of the node's
    `local_world_size` ranks (more ranks than GPUs would fail later as "invalid device ordinal")."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "auto":
        return "nccl" if 0 < local_world_size <= gpus else "gloo"
    if requested == "nccl" and local_world_size > gpus:
        raise ValueError(f"--backend nccl needs one GPU per rank, but torchrun starts {local_world_size} rank(s) on "
                         f"this node and it has {gpus} GPU(s); use --nproc-per-node {gpus} or --backend gloo"
                         if gpus else "--backend nccl needs a GPU per rank and this node has none; use --backend gloo")
    return requested


def _torchrun_step(cfg, args):
    """Under torchrun every process is a rank: init from env://, step, gather traces on rank 0."""
    from datetime import timedelta

    import torch.distributed as dist
    # torch._dynamo is never imported here (the layer uses plain collectives, moe_lab.dispatch): imported
    # after the process group exists, it keeps references to the group alive, destroy_process_group()
    # cannot free it, and gloo's native threads (gloo_tcp_loop, pt_gloo_runloop) outlive it into
    # interpreter exit, aborting the rank when a peer closes its sockets first
    # (tests/test_demo.py::test_torchrun_demo_leaves_no_gloo_thread_behind_its_process_group).

    from .cluster import RankContext
    from .device import rank_device
    from .step import step_on_rank
    from .trace import StepTrace

    rank, P, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    backend = torchrun_backend(args.backend, int(os.environ.get("LOCAL_WORLD_SIZE", local + 1)))
    device, device_kwargs = rank_device(backend, local)
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=60), **device_kwargs)
    ctx = RankContext(rank, P, backend, device, dist.group.WORLD)
    try:
        part = step_on_rank(ctx, cfg, args.tokens_per_rank, args.skew)
        parts = [None] * P if rank == 0 else None
        dist.gather_object(part, parts, dst=0)
        dist.barrier()  # nobody tears down its connections while rank 0 may still be receiving
    finally:
        # teardown order: drop our references to the group (the cached layer holds it), then
        # destroy it, which joins its native threads before this process starts to exit
        ctx._state.clear()
        ctx.group = None
        dist.destroy_process_group()
    return StepTrace.merge(parts) if rank == 0 else None


def report(trace, timing: bool = False) -> str:
    """The step in words and small tables: who sent what to whom, kept and dropped, load."""
    P, E = trace.world_size, trace.num_experts
    cap = "dropless" if trace.capacity is None else f"C = {trace.capacity} slots per expert per source rank"
    lines = [f"{P} ranks, {E} experts (m = {E // P} per rank), k = {trace.k}, N = {trace.tokens_per_rank} "
             f"tokens per rank, {trace.dispatch} dispatch, {cap}", "",
             "send_counts [source rank -> destination rank] (dispatch; combine is the transpose):"]
    w = max(5, len(str(int(trace.send_counts.max()))) + 1)
    lines.append("      " + "".join(f"{'->' + str(j):>{w}}" for j in range(P)))
    for i in range(P):
        lines.append(f"  r{i:<3}" + "".join(f"{int(v):>{w}}" for v in trace.send_counts[i]))
    lines += ["", "expert   kept  dropped"]
    lines += [f"  E{e:<5}{int(trace.kept[e]):>5}{int(trace.dropped[e]):>9}" for e in range(E)]
    lines += ["", f"dropped: {int(trace.dropped.sum())} of {trace.assignments} assignments "
              f"({100 * trace.dropped_share:.1f}%)", "",
              "rank  tokens received  buffer rows  bytes sent"]
    lines += [f"  r{r:<4}{int(trace.recv_tokens[r]):>15}{int(trace.recv_rows[r]):>13}{int(trace.bytes_sent[r]):>12}"
              for r in range(P)]
    lines += ["", f"load max/mean = {trace.load_imbalance:.2f}, aux loss = {trace.aux_loss:.6f}"]
    if timing:
        t = np.asarray(trace.rank_time_s) * 1e3
        lines.append("rank time (ms): " + " ".join(f"{v:.1f}" for v in t))
    return "\n".join(lines)

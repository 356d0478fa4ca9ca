"""Functions the benchmark runs *on the ranks* (Cluster.run imports them by name).

Each timed function starts with a barrier so every rank begins together, then times only its
own work; the parent takes the max over ranks as the step's time.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist


def peak_rss_reset() -> None:
    """Reset this process's peak resident memory (Linux: /proc/self/clear_refs), if allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_bytes() -> dict:
    """Current and peak resident memory of this process (Linux; zeros elsewhere)."""
    out = dict(rss=0, peak=0)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    out["peak"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


# ---- transport: what the wire and the memory can do, without any MoE logic -------------------
def _transport_buffers(ctx, rows: int, d: int):
    key = ("bench_transport", rows, d)
    cache = ctx.state("bench.transport")
    if key not in cache:
        # Row i of rank r holds the value r * rows + i: after the exchange every row says where it came from.
        src = (ctx.rank * rows + torch.arange(rows, dtype=torch.float32)).unsqueeze(1).repeat(1, d).contiguous()
        cache[key] = (src, torch.empty_like(src))
    return cache[key]


def transport_probe(ctx, rows: int, d: int, what: str) -> float:
    """Seconds for one equal-split all_to_all_single ('alltoall') or one copy ('memcpy') of [rows, d]."""
    src, dst = _transport_buffers(ctx, rows, d)
    dist.barrier(group=ctx.group)
    t0 = time.perf_counter()
    if what == "alltoall":
        dist.all_to_all_single(dst, src, group=ctx.group)
    elif what == "memcpy":
        dst.copy_(src)
    else:
        raise ValueError(f"what={what!r}: 'alltoall' or 'memcpy'")
    return time.perf_counter() - t0


def transport_check(ctx, rows: int, d: int) -> dict:
    """Run both probes once and check the received rows: {'alltoall': wrong rows, 'memcpy': wrong rows}."""
    P, r = ctx.world_size, ctx.rank
    src, dst = _transport_buffers(ctx, rows, d)
    c = rows // P
    dst.zero_()
    dist.all_to_all_single(dst, src, group=ctx.group)
    j = torch.arange(rows) // c  # the source rank of each received row
    expected = (j * rows + r * c + torch.arange(rows) % c).to(torch.float32).unsqueeze(1)
    a2a_bad = int((dst != expected).any(dim=1).sum())
    dst.zero_()
    dst.copy_(src)
    copy_bad = int((dst != src).any(dim=1).sum())
    return dict(alltoall=a2a_bad, memcpy=copy_bad)


# ---- the naive notebook: a brand-new process group for one step ---------------------------------
def spawned_step(rank: int, world_size: int, init_file: str, out_dir: str, cfg, tokens_per_rank: int) -> None:
    """One rank of a throwaway `torch.multiprocessing.spawn` group: init, one step, save y, exit."""
    import os
    from datetime import timedelta

    from .common import cores
    from moe_lab.cluster import RankContext
    from moe_lab.step import step_on_rank

    torch.set_num_threads(max(1, cores() // world_size))  # the same thread rule as Cluster's ranks
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        ctx = RankContext(rank, world_size, "gloo", torch.device("cpu"), dist.group.WORLD)
        _, tensors = step_on_rank(ctx, cfg, tokens_per_rank, 0.0, False, True)
        torch.save(tensors["y"], os.path.join(out_dir, f"y{rank}.pt"))
    finally:
        dist.destroy_process_group()


# ---- the step's floor: its three AlltoAlls and nothing else ------------------------------------------
def bare_alltoalls(ctx, send_counts, d: int, num_experts: int, check: bool = False):
    """The three gloo AlltoAlls of one ragged step, with the step's own sizes and nothing else:
    the count exchange ([E] longs, equal splits), the dispatch (send_counts[r][j] rows of d floats
    to rank j) and the combine (the same rows back). Seconds after a barrier; with `check`, the
    number of rows that did not come back to where they started (0 when the exchange is right)."""
    P, r = ctx.world_size, ctx.rank
    cache = ctx.state("bench.floor")
    key = (tuple(map(tuple, send_counts)), d, num_experts)
    if key not in cache:
        cache.clear()
        send = [int(c) for c in send_counts[r]]
        recv = [int(send_counts[s][r]) for s in range(P)]
        rows = sum(send)
        src = (r * 1e6 + torch.arange(rows, dtype=torch.float32)).unsqueeze(1).repeat(1, d).contiguous()  # row ids
        cache[key] = (torch.zeros(num_experts, dtype=torch.long), torch.empty(num_experts, dtype=torch.long),
                      src, torch.empty(sum(recv), d), torch.empty_like(src), send, recv)
    counts, counts_out, src, mid, back, send, recv = cache[key]
    back.zero_()
    dist.barrier(group=ctx.group)
    t0 = time.perf_counter()
    dist.all_to_all_single(counts_out, counts, group=ctx.group)
    dist.all_to_all_single(mid, src, recv, send, group=ctx.group)
    dist.all_to_all_single(back, mid, send, recv, group=ctx.group)
    elapsed = time.perf_counter() - t0
    return int((back != src).any(dim=1).sum()) if check else elapsed


# ---- notebook <-> ranks: a big tensor each way, pickled by value or through shared memory ------------
def rank_output(ctx, rows: int, d: int, by_value: bool):
    """This rank's [rows, d] output (row i holds rank * rows + i). by_value: returned as pickled
    bytes, which cross the pipe byte by byte (the parent unpickles them); else as the tensor itself,
    which Cluster sends through shared memory."""
    import pickle

    y = (ctx.rank * rows + torch.arange(rows, dtype=torch.float32)).unsqueeze(1).expand(rows, d).contiguous()
    return pickle.dumps(y, protocol=pickle.HIGHEST_PROTOCOL) if by_value else y


def rank_input(ctx, x) -> float:
    """Sum of a [rows, d] argument, received as pickled bytes or as a (shared) tensor."""
    import pickle

    if isinstance(x, bytes):
        x = pickle.loads(x)
    return float(x.double().sum())


def router_grad_all_reduce(ctx, shape, reps: int, one_round: bool):
    """Per-call seconds of summing a router-gradient-sized tensor over the ranks: gloo's ring
    all_reduce, or moe_lab.allreduce.sum_in_one_round; and the sum, to check against the other."""
    from moe_lab.allreduce import sum_in_one_round

    g = torch.randn(*shape, generator=torch.Generator().manual_seed(ctx.rank)).to(ctx.device)
    out = g.clone()
    sum_in_one_round(out, ctx.group) if one_round else dist.all_reduce(out, group=ctx.group)  # warm, and the check
    dist.barrier(group=ctx.group)
    t = time.perf_counter()
    for _ in range(reps):
        t_ = g.clone()
        sum_in_one_round(t_, ctx.group) if one_round else dist.all_reduce(t_, group=ctx.group)
    return (time.perf_counter() - t) / reps, out.cpu()

"""DP × EP × TP: one grid of ranks, and every process group sliced from it.

    grid = arange(world).view(dp, ep, tp)      # rank = (dp_rank * ep + ep_rank) * tp + tp_rank
    tp group : grid[d, e, :]   ranks that split each expert's hidden dimension (all-reduce)
    ep group : grid[d, :, t]   ranks that hold different experts (the AlltoAlls)
    dp group : grid[:, e, t]   ranks that hold the *same* expert shard on different data
                               (expert-data-parallel gradient all-reduce)
    router   : grid[:, :, t]   all replicas of the router that saw different tokens
TP neighbours are adjacent ranks (on a real machine: the same node, the fastest links).
Expert-data-parallel and expert-tensor-parallel groups beside the EP AlltoAll follow DeepSpeed-MoE
(Rajbhandari et al., arXiv 2201.05596) and Megatron-LM's f/g (arXiv 1909.08053); the grid-slicing
style is picotron's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .allreduce import all_reduce
from .comm import counting, note
from .config import check_world_size


def layout(world_size: int, dp: int, ep: int, tp: int) -> dict:
    """The groups as lists of ranks (pure, no processes): {'tp': [[...]...], 'ep': ..., 'dp': ..., 'router': ...}."""
    check_world_size(world_size)
    for name, v in (("dp", dp), ("ep", ep), ("tp", tp)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: must be a whole number >= 1")
    if dp * ep * tp != world_size:
        raise ValueError(f"dp × ep × tp = {dp} × {ep} × {tp} = {dp * ep * tp}, but world_size = {world_size}")
    grid = torch.arange(world_size, device="cpu").view(dp, ep, tp)  # host bookkeeping, never a collective
    return {
        "tp": grid.reshape(-1, tp).tolist(),
        "ep": grid.permute(0, 2, 1).reshape(-1, ep).tolist(),
        "dp": grid.permute(1, 2, 0).reshape(-1, dp).tolist(),
        "router": grid.permute(2, 0, 1).reshape(tp, -1).tolist(),
    }


def coords(rank: int, dp: int, ep: int, tp: int) -> tuple[int, int, int]:
    """(dp_rank, ep_rank, tp_rank) of a global rank."""
    return rank // (ep * tp), (rank // tp) % ep, rank % tp


@dataclass
class Mesh:
    dp: int
    ep: int
    tp: int
    dp_rank: int
    ep_rank: int
    tp_rank: int
    groups: dict  # name -> this rank's ProcessGroup
    ranks: dict  # name -> the ranks in this rank's group


def build(ctx, dp: int, ep: int, tp: int) -> Mesh:
    """Create every group on every rank (new_group must be called by all ranks, in one order)."""
    lay = layout(ctx.world_size, dp, ep, tp)
    groups, ranks = {}, {}
    for name, lists in lay.items():
        for members in lists:
            g = dist.new_group(members)
            if ctx.rank in members:
                groups[name], ranks[name] = g, members
    return Mesh(dp, ep, tp, *coords(ctx.rank, dp, ep, tp), groups, ranks)


def composed_step_on_rank(ctx, cfg, dp: int, ep: int, tp: int, tokens_per_rank: int, skew: float = 0.0):
    """Forward + backward of one MoE layer on a DP × EP × TP mesh, counting every collective.

    Token blocks: each (dp_rank, ep_rank) pair owns N tokens; its TP ranks share them. Returns
    (trace, tensors, log): y and the gradients (to compare with the reference), and the list of
    (op, group, bytes) collectives this rank ran.
    """
    from .device import synchronizer
    from .layer import MoELayer
    from .workload import init_weights, make_tokens, upstream_grad

    key = ("mesh", dp, ep, tp)
    meshes = ctx.state("mesh")
    if key not in meshes:
        meshes[key] = build(ctx, dp, ep, tp)
    mesh = meshes[key]
    N, blocks = tokens_per_rank, dp * ep
    b = mesh.dp_rank * ep + mesh.ep_rank  # this rank's token block
    weights = init_weights(cfg)
    layer = MoELayer(cfg, mesh.groups["ep"], ctx.device, tp_group=mesh.groups["tp"],
                     router_group=mesh.groups["router"]).load_global_weights(*weights)
    x = make_tokens(cfg, blocks, N, skew, weights[0])[b * N : (b + 1) * N].to(ctx.device).requires_grad_()  # [N, d]
    g = upstream_grad(cfg, blocks, N)[b * N : (b + 1) * N].to(ctx.device)  # [N, d] dL/dy
    sync = synchronizer(ctx.device)
    with counting() as log:
        sync()
        t0 = time.perf_counter()
        y, trace = layer(x)
        ((y * g).sum() + layer.aux_loss + layer.z_loss).backward()
        layer.sync_router_grads()
        for w in (layer.w_in, layer.w_out):  # expert-data-parallel: same shard, other data
            note("all_reduce", "dp", w.grad)
            all_reduce(w.grad, group=mesh.groups["dp"])
        sync()  # on a GPU the clock would otherwise stop when the last kernels are queued, not done
        trace.times["total"] = time.perf_counter() - t0
    # back to the parent as CPU tensors: a CUDA tensor in the reply would open a context on every
    # GPU in the parent and leave it holding handles that dangle when the ranks stop
    tensors = dict(y=y.detach().cpu(), x_grad=x.grad.cpu(), router_grad=layer.router_w.grad.cpu(),
                   w_in_grad=layer.w_in.grad.cpu(), w_out_grad=layer.w_out.grad.cpu(), block=b,
                   coords=(mesh.dp_rank, mesh.ep_rank, mesh.tp_rank))
    return trace, tensors, log

"""Rank functions only the tests use (ranks import them by module name, so they live in a module)."""
from __future__ import annotations

import torch

from moe_lab.layer import MoELayer
from moe_lab.step import step_on_rank


def step_many(ctx, jobs):
    """Several step_on_rank calls in one round trip: jobs is a list of argument tuples."""
    return [step_on_rank(ctx, *job) for job in jobs]


def bad_input_on_rank(ctx, cfg, kind: str):
    """Feed the layer a wrong x (for showing the error a user gets): 'shape', 'dtype' or 'device'."""
    layer = MoELayer(cfg, ctx.group, ctx.device)
    if kind == "device":  # not on the rank's device (on a GPU rank: tokens left on the CPU)
        return layer(torch.zeros(4, cfg.d_model, device="meta"))
    x = torch.zeros(4, cfg.d_model + 1) if kind == "shape" else torch.zeros(4, cfg.d_model, dtype=torch.float64)
    return layer(x)


def prewarm_state(ctx):
    """(this rank's prewarm thread, whether prewarming would start here): neither in a rank."""
    from moe_lab import prewarm

    return prewarm._thread, prewarm.should_prewarm()


def collective_on_default_device(ctx):
    """A rank function with the bug the device probe exists for: a tensor made without device=."""
    import torch.distributed as dist

    t = torch.ones(2)  # on the default device, not ctx.device
    dist.all_reduce(t, group=ctx.group)
    return float(t.sum().cpu())


def returns_device_tensor(ctx):
    """A result left on the rank's device (here: the default device) instead of the CPU."""
    return {"y": torch.zeros(2)}


def compiler_loaded(ctx) -> bool:
    """Has this rank imported torch's compiler (torch._dynamo, 1.6 s per process)?"""
    import sys

    return "torch._dynamo" in sys.modules


def all_reduce_both_ways(ctx, numel: int):
    """moe_lab.allreduce.all_reduce against torch's own, on a seeded tensor per rank:
    (ours SUM, ours AVG, torch's SUM) as CPU tensors."""
    import torch.distributed as dist

    from moe_lab.allreduce import all_reduce

    g = torch.Generator().manual_seed(1000 + ctx.rank)
    t = torch.randn(numel, generator=g).to(ctx.device)
    ours, mean, ref = t.clone(), t.clone(), t.clone()
    all_reduce(ours, group=ctx.group)
    all_reduce(mean, dist.ReduceOp.AVG, group=ctx.group)
    dist.all_reduce(ref, group=ctx.group)
    return ours.cpu(), mean.cpu(), ref.cpu()


def sum_in_one_round_on_rank(ctx):
    """gloo's small all-reduce (moe_lab.allreduce.sum_in_one_round) on a tensor on the rank's device."""
    from moe_lab.allreduce import sum_in_one_round

    return float(sum_in_one_round(torch.ones(3, device=ctx.device), ctx.group).sum().cpu())

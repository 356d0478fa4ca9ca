"""Ways for one rank to fail, for showing (and testing) what the Cluster does about it.

Each is `fn(ctx, bad_rank)` for `Cluster.run`: the other ranks enter a collective and wait for
the bad one, as they would in a real step when one GPU fails.
"""
from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist


def _then_collective(ctx):
    t = torch.ones(ctx.world_size, device=ctx.device)  # NCCL takes only tensors on the rank's GPU
    dist.all_to_all_single(torch.empty_like(t), t)
    return ctx.rank


def raise_on(ctx, bad_rank: int):
    """The bad rank raises a Python exception before the collective."""
    if ctx.rank == bad_rank:
        raise ValueError(f"expert on rank {bad_rank} failed")
    return _then_collective(ctx)


def exit_on(ctx, bad_rank: int):
    """The bad rank's process exits at once (no exception, no reply)."""
    if ctx.rank == bad_rank:
        os._exit(7)
    return _then_collective(ctx)


def kill_mid_collective(ctx, bad_rank: int):
    """The bad rank is SIGKILLed while the others are inside an AlltoAll with it."""
    if ctx.rank == bad_rank:
        time.sleep(0.2)  # let the others enter the collective first
        os.kill(os.getpid(), signal.SIGKILL)
    return _then_collective(ctx)


def hang_on(ctx, bad_rank: int, seconds: float = 3600.0):
    """The bad rank never reaches the collective (a deadlock, a stuck kernel)."""
    if ctx.rank == bad_rank:
        time.sleep(seconds)
    return _then_collective(ctx)


def pid(ctx):
    return os.getpid()

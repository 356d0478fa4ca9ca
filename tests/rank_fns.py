"""Rank functions only the tests use (ranks import them by module name, so they live in a module)."""
from __future__ import annotations

import torch

from moe_lab.layer import MoELayer
from moe_lab.step import step_on_rank


def step_many(ctx, jobs):
    """Several step_on_rank calls in one round trip: jobs is a list of argument tuples."""
    return [step_on_rank(ctx, *job) for job in jobs]


def bad_input_on_rank(ctx, cfg, kind: str):
    """Feed the layer a wrong x (for showing the error a user gets): 'shape' or 'dtype'."""
    layer = MoELayer(cfg, ctx.group, ctx.device)
    x = torch.zeros(4, cfg.d_model + 1) if kind == "shape" else torch.zeros(4, cfg.d_model, dtype=torch.float64)
    return layer(x)


def prewarm_state(ctx):
    """(this rank's prewarm thread, whether prewarming would start here): neither in a rank."""
    from moe_lab import prewarm

    return prewarm._thread, prewarm.should_prewarm()

"""One seeded step of the MoE layer on a rank: what `Cluster.step` and the torchrun demo run.

Weights and tokens come from moe_lab.workload (the same seed on every rank and in the parent),
so nothing but the config travels, and the result can be checked against the reference.
"""
from __future__ import annotations

import time

import torch

from .layer import MoELayer
from .workload import init_weights, make_tokens, upstream_grad

_MAX_CACHED = 16


def _cached(ctx, key, make):
    if key not in ctx.cache:
        if len(ctx.cache) >= _MAX_CACHED:
            ctx.cache.clear()
        ctx.cache[key] = make()
    return ctx.cache[key]


def step_on_rank(ctx, cfg, tokens_per_rank: int, skew: float = 0.0, backward: bool = False,
                 return_tensors: bool = False):
    """Forward (and backward with loss Σ y·dL/dy + aux + z) on this rank's block of tokens.

    Returns the RankTrace, or (RankTrace, tensors) with y, grads of x / router / local experts
    when `return_tensors` (used to check the distributed run against the reference).
    """
    P, N, r = ctx.world_size, tokens_per_rank, ctx.rank
    weights = _cached(ctx, ("weights", cfg.seed, cfg.d_model, cfg.d_hidden, cfg.num_experts), lambda: init_weights(cfg))
    layer = _cached(ctx, ("layer", cfg, P), lambda: MoELayer(cfg, ctx.group, ctx.device).load_global_weights(*weights))
    x_all = _cached(ctx, ("tokens", cfg.seed, cfg.d_model, cfg.num_experts, P, N, skew),
                    lambda: make_tokens(cfg, P, N, skew, weights[0]))
    x = x_all[r * N : (r + 1) * N].to(ctx.device)  # [N, d] this rank's tokens
    if backward:
        x.requires_grad_(True)
        layer.zero_grad(set_to_none=True)
    y, trace = layer(x)
    if backward:
        t0 = time.perf_counter()
        g = _cached(ctx, ("grad", cfg.seed, cfg.d_model, P, N), lambda: upstream_grad(cfg, P, N))
        loss = (y * g[r * N : (r + 1) * N].to(ctx.device)).sum() + layer.aux_loss + layer.z_loss
        loss.backward()
        layer.sync_router_grads()
        trace.times["backward"] = time.perf_counter() - t0
        trace.times["total"] += trace.times["backward"]
    if not return_tensors:
        return trace
    grad = lambda t: None if t.grad is None else t.grad.detach().cpu()  # noqa: E731
    return trace, dict(y=y.detach().cpu(), x_grad=grad(x), router_grad=grad(layer.router_w),
                       w_in_grad=grad(layer.w_in), w_out_grad=grad(layer.w_out))


def step_many(ctx, jobs):
    """Several step_on_rank calls in one round trip: jobs is a list of argument tuples."""
    return [step_on_rank(ctx, *job) for job in jobs]


def bad_input_on_rank(ctx, cfg, kind: str):
    """Feed the layer a wrong x (for showing the error a user gets): 'shape' or 'dtype'."""
    layer = MoELayer(cfg, ctx.group, ctx.device)
    x = torch.zeros(4, cfg.d_model + 1) if kind == "shape" else torch.zeros(4, cfg.d_model, dtype=torch.float64)
    return layer(x)

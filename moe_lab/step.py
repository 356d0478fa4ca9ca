"""One seeded step of the MoE layer on a rank (what `Cluster.step` and the torchrun demo run), and
its single-process twin `reference_step`, which every distributed result is checked against.

Weights and tokens come from moe_lab.workload (the same seed on every rank and in the parent),
so nothing but the config travels, and the result can be checked against the reference.
"""
from __future__ import annotations

import time

import torch

from .device import synchronizer
from .layer import MoELayer
from .reference import moe_forward
from .workload import init_shared_weights, init_weights, make_tokens, upstream_grad

_MAX_CACHED = 16


def _cached(ctx, key, make):
    """This module's own cache on the rank (weights, layers, tokens), bounded; other modules keep theirs."""
    cache = ctx.state("step")
    if key not in cache:
        if len(cache) >= _MAX_CACHED:
            cache.clear()
        cache[key] = make()
    return cache[key]


def step_on_rank(ctx, cfg, tokens_per_rank: int, skew: float = 0.0, backward: bool = False,
                 return_tensors: bool = False):
    """Forward (and backward with loss Σ y·dL/dy + aux + z) on this rank's block of tokens.

    Returns the RankTrace, or (RankTrace, tensors) with y, grads of x / router / local experts
    when `return_tensors` (used to check the distributed run against the reference).
    """
    P, N, r = ctx.world_size, tokens_per_rank, ctx.rank
    weights = _cached(ctx, ("weights", cfg.seed, cfg.d_model, cfg.d_hidden, cfg.num_experts, cfg.granularity),
                      lambda: init_weights(cfg))
    shared = _cached(ctx, ("shared", cfg.seed, cfg.d_model, cfg.d_hidden, cfg.num_shared, cfg.granularity),
                     lambda: init_shared_weights(cfg))
    nodes = getattr(ctx, "nodes", 1)
    layer = _cached(ctx, ("layer", cfg, P, nodes),
                    lambda: MoELayer(cfg, ctx.group, ctx.device, nodes=nodes).load_global_weights(*weights, shared=shared))
    x_all = _cached(ctx, ("tokens", cfg.seed, cfg.d_model, cfg.num_experts, cfg.granularity, P, N, skew),
                    lambda: make_tokens(cfg, P, N, skew, weights[0]))
    x = x_all[r * N : (r + 1) * N].to(ctx.device)  # [N, d] this rank's tokens
    if backward:
        x.requires_grad_(True)
        layer.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(backward):  # a forward-only step records no autograd graph
        y, trace = layer(x)
    if backward:
        sync = synchronizer(ctx.device)  # on a GPU backward's kernels run after Python returns
        t0 = time.perf_counter()
        g = _cached(ctx, ("grad", cfg.seed, cfg.d_model, P, N), lambda: upstream_grad(cfg, P, N))
        loss = (y * g[r * N : (r + 1) * N].to(ctx.device)).sum() + layer.aux_loss + layer.z_loss
        loss.backward()
        layer.sync_router_grads()
        sync()
        trace.times["backward"] = time.perf_counter() - t0
        trace.times["total"] += trace.times["backward"]
    if not return_tensors:
        return trace
    grad = lambda t: None if t.grad is None else t.grad.detach().cpu()  # noqa: E731
    tensors = dict(y=y.detach().cpu(), x_grad=grad(x), router_grad=grad(layer.router_w),
                   w_in_grad=grad(layer.w_in), w_out_grad=grad(layer.w_out))
    if layer.shared is not None:
        tensors.update(shared_w_in_grad=grad(layer.shared.w_in), shared_w_out_grad=grad(layer.shared.w_out))
    return trace, tensors


REPLICATED = ("router_grad", "shared_w_in_grad", "shared_w_out_grad")  # the same on every rank after the sync


def gather_tensors(parts) -> dict:
    """The ranks' `step_on_rank(..., return_tensors=True)` results -> tensors shaped like
    `reference_step`'s: per-rank blocks (y, x_grad, expert grads) concatenated in rank order,
    replicated gradients (router, shared experts) taken from rank 0."""
    names = parts[0][1].keys()
    return {name: parts[0][1][name] if name in REPLICATED else
            (None if parts[0][1][name] is None else torch.cat([t[name] for _, t in parts])) for name in names}


def reference_step(cfg, world_size: int, tokens_per_rank: int, backward: bool, skew: float = 0.0, nodes: int = 1):
    """The single-process run of what `step_on_rank` does on every rank: (y, grads, info).

    Loss (for backward) = Σ y · dL/dy + Σ aux + Σ z over the W blocks, which is what the ranks
    backpropagate together once the router gradient is summed over them. grads holds x_grad,
    router_grad, w_in_grad, w_out_grad (and shared_w_in_grad, shared_w_out_grad with shared
    experts; empty without backward); info is moe_forward's.
    """
    weights = init_weights(cfg)
    shared = init_shared_weights(cfg)
    x = make_tokens(cfg, world_size, tokens_per_rank, skew, weights[0])
    if backward:
        weights = [w.clone().requires_grad_() for w in weights]
        shared = None if shared is None else [w.clone().requires_grad_() for w in shared]
        x = x.clone().requires_grad_()
    with torch.set_grad_enabled(backward):
        y, info = moe_forward(x, *weights, cfg, world_size=world_size, shared=shared, nodes=nodes)
        grads = {}
        if backward:
            loss = (y * upstream_grad(cfg, world_size, tokens_per_rank)).sum() + info["aux_loss"].sum() + info["z_loss"].sum()
            loss.backward()
            grads = dict(x_grad=x.grad, router_grad=weights[0].grad, w_in_grad=weights[1].grad, w_out_grad=weights[2].grad)
            if shared is not None:
                grads.update(shared_w_in_grad=shared[0].grad, shared_w_out_grad=shared[1].grad)
    return y.detach(), grads, info

"""A toy task where routing collapses without help, trained for real on the ranks.

Tokens come from Q clusters around a shared mean μ, and the target is a different linear map per
cluster, so experts have something to specialise in. The router starts *collapsed*: its expert-0
column points along μ, so every token's first choice is expert 0. With normalised top-k gates
the task loss only ever reaches the logits of the chosen experts, so nothing pulls tokens toward
the idle ones: without balancing the collapse stays. Three ways out, compared side by side:
  "aux"   the auxiliary loss α · E · Σ f_i p_i (Switch, arXiv 2101.03961; GShard, arXiv 2006.16668),
  "bias"  aux-loss-free balancing (DeepSeek-V3, arXiv 2412.19437; Wang et al., arXiv 2408.15664): a per-expert bias on the top-k *selection* only,
          raised by γ for under-loaded experts and lowered by γ for over-loaded ones each step,
  "none"  α = 0 and no bias: the collapse stays.
The router z-loss (cfg.z_alpha) can be switched on in any mode; it keeps logits small.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .config import MoEConfig, check_tokens_per_rank
from .layer import MoELayer
from .workload import init_weights

BALANCE = ("none", "aux", "bias")


def task(cfg: MoEConfig, num_clusters: int | None = None):
    """The task's fixed parts from cfg.seed: μ [d], cluster centres [Q, d], targets T [Q, d, d]."""
    g = torch.Generator().manual_seed(cfg.seed + 100)
    d, Q = cfg.d_model, num_clusters or cfg.num_experts
    mu = torch.randn(d, generator=g)
    mu = 3.0 * mu / mu.norm()
    centres = 2.0 * torch.randn(Q, d, generator=g) / d**0.5
    targets = torch.randn(Q, d, d, generator=g) / d**0.5
    return mu, centres, targets


def batch(cfg: MoEConfig, parts, tokens: int, step: int, rank: int):
    """One rank's batch at one step: x [N, d] and target y* [N, d], seeded by (seed, step, rank)."""
    mu, centres, targets = parts
    g = torch.Generator().manual_seed(hash((cfg.seed, step, rank)) % 2**62)
    c = torch.randint(0, centres.shape[0], (tokens,), generator=g)  # [N] cluster of each token
    x = mu + centres[c] + 0.3 * torch.randn(tokens, cfg.d_model, generator=g)
    y_star = torch.einsum("nd,nde->ne", x - mu, targets[c])
    return x, y_star


def collapsed_router(cfg: MoEConfig, mu: torch.Tensor, strength: float = 2.0):
    """The seeded router plus a push along μ on expert 0: every token starts preferring expert 0."""
    router_w = init_weights(cfg)[0].clone()
    router_w[:, 0] += strength * mu / mu.norm() ** 2 * mu.norm()
    return router_w


def train_step_on_rank(ctx, cfg: MoEConfig, tokens: int, balance: str, lr: float, gamma: float, step: int):
    """One training step on this rank: forward, task + balancing losses, backward through both
    AlltoAlls, router gradient all-reduce, Adam. State (layer, optimiser) lives in ctx.state("train")."""
    key = ("train", cfg, tokens, balance, lr, gamma)
    cache = ctx.state("train")
    if step == 0 or key not in cache:
        cache.clear()  # one run at a time: a new run frees the last one's layer and optimiser
        parts = task(cfg)
        _, w_in, w_out = init_weights(cfg)
        layer = MoELayer(cfg, ctx.group, ctx.device).load_global_weights(collapsed_router(cfg, parts[0]), w_in, w_out)
        cache[key] = (layer, torch.optim.Adam(layer.parameters(), lr=lr), parts)
    layer, opt, parts = cache[key]
    x, y_star = (t.to(ctx.device) for t in batch(cfg, parts, tokens, step, ctx.rank))
    y, trace = layer(x)
    task_loss = torch.mean((y - y_star) ** 2)
    loss = task_loss + layer.z_loss + (layer.aux_loss if balance == "aux" else 0.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    layer.sync_router_grads(dist.ReduceOp.AVG if ctx.backend == "nccl" else dist.ReduceOp.SUM)
    if ctx.backend != "nccl":
        layer.router_w.grad /= ctx.world_size  # gloo has no AVG: sum, then divide
    opt.step()
    if balance == "bias":
        _update_bias(layer, trace, gamma, ctx.group)
    trace.times["task_loss"] = float(task_loss.detach())  # travels with the trace, read by the parent
    return trace


@torch.no_grad()
def _update_bias(layer, trace, gamma, group):
    """Aux-loss-free balancing: bias_i += γ · sign(mean load - load_i), with the global load."""
    load = torch.bincount(torch.as_tensor(trace.chosen).reshape(-1), minlength=layer.cfg.num_experts).float()
    dist.all_reduce(load, group=group)
    layer.select_bias += gamma * torch.sign(load.mean() - load)


def train(cluster, cfg: MoEConfig, steps: int = 100, tokens_per_rank: int = 256, balance: str = "aux",
          lr: float = 0.01, gamma: float = 0.01):
    """Train on the cluster's ranks; yields one record per step (for live curves):
    step, load_share [E] (share of assignments each expert was chosen for), max_over_mean,
    dropped_share, aux_loss, task_loss."""
    from .trace import StepTrace

    if balance not in BALANCE:
        raise ValueError(f"balance={balance!r}: choose one of {BALANCE}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a whole number >= 1")
    check_tokens_per_rank(tokens_per_rank)
    cfg.check_world(cluster.world_size)
    if balance != "aux":
        cfg = cfg.replace(aux_alpha=0.0)
    for step in range(steps):
        parts = cluster.run(train_step_on_rank, cfg, tokens_per_rank, balance, lr, gamma, step)
        trace = StepTrace.merge(parts)
        share = trace.chosen_count / trace.chosen_count.sum()
        yield dict(step=step, load_share=share.tolist(), max_over_mean=float(share.max() * len(share)),
                   dropped_share=trace.dropped_share, aux_loss=trace.aux_loss,
                   task_loss=sum(p.times["task_loss"] for p in parts) / len(parts), balance=balance)

"""A toy task where routing collapses without help and too much balancing hurts, trained on the ranks.

Tokens come from Q clusters around a shared mean μ; the target of a token of cluster q is its own
linear map of the token, y* = T_q (x − μ), a different random T_q per cluster. An expert that sees
one cluster can learn that cluster's map; an expert that sees a mixture is pulled towards the
maps' average, which is about zero. So routing by *content* matters, and the task loss shows it.

The router starts *collapsed* (start="collapsed"): its expert-0 column points along μ, so every
token's first choice is expert 0; or from the seeded random router (start="random"). With
normalised top-k gates the task loss only reaches the logits of the chosen experts, so little
pulls tokens toward idle ones: without balancing the collapse stays. Ways out:
  "aux"       the auxiliary loss α · E · Σ_{i=1}^{E} f_i p_i (Switch, arXiv 2101.03961; GShard,
              arXiv 2006.16668). Too large an α and the aux gradient, which knows nothing about
              the task, outvotes the task's on the router: tokens stop going to the expert that
              knows their cluster, and the task loss rises.
  "bias"      aux-loss-free balancing (DeepSeek-V3, arXiv 2412.19437; Wang et al., arXiv 2408.15664):
              a per-expert bias on the top-k *selection* only, raised by γ for under-loaded experts
              and lowered by γ for over-loaded ones after each step,
  "aux+bias"  both,
  "none"      α = 0 and no bias: the collapse stays.
The router z-loss (cfg.z_alpha) can be switched on in any mode; it keeps logits small.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from .adam import Adam
from .allreduce import all_reduce
from .config import MoEConfig, check_tokens_per_rank
from .layer import MoELayer
from .workload import init_weights

BALANCE = ("none", "aux", "bias", "aux+bias")
STARTS = ("collapsed", "random")
_CPU = torch.device("cpu")
NOISE = 1.0  # within-cluster spread of x: the part of y* an expert only learns if it sees one cluster
SEPARATION = 4.0  # distance scale of the cluster centres
COLLAPSE = 3.5  # how hard the collapsed router prefers expert 0 (its logit margin is 3.5 · |μ| = 10.5)
# The task's units. L_aux is about α whatever the task, so which α is "small" depends on the size of
# the task loss. Targets are scaled by S (task loss ∝ S²; S² = 1/30 here) and so are the experts'
# output weights and their Adam step: the same run as at S = 1 with α/S², in units where the usual
# α = 0.01 balances within a few dozen steps.
TARGET_SCALE = (1 / 30) ** 0.5


def task(cfg: MoEConfig, num_clusters: int | None = None):
    """The task's fixed parts from cfg.seed: μ [d], cluster centres [Q, d], targets T [Q, d, d]."""
    g = torch.Generator().manual_seed(cfg.seed + 100)
    d, Q = cfg.d_model, num_clusters or cfg.num_experts
    mu = torch.randn(d, generator=g, device=_CPU)  # seeded on the host, as in workload.py
    mu = 3.0 * mu / mu.norm()
    centres = SEPARATION * torch.randn(Q, d, generator=g, device=_CPU) / d**0.5
    targets = torch.randn(Q, d, d, generator=g, device=_CPU) / d**0.5
    return mu, centres, targets


def batch(cfg: MoEConfig, parts, tokens: int, step: int, rank: int):
    """One rank's batch at one step: x [N, d] and target y* [N, d], seeded by (seed, step, rank)."""
    mu, centres, targets = parts
    g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 4099 + rank)
    c = torch.randint(0, centres.shape[0], (tokens,), generator=g, device=_CPU)  # [N] cluster of each token
    x = mu + centres[c] + NOISE * torch.randn(tokens, cfg.d_model, generator=g, device=_CPU)
    Q, d = targets.shape[0], cfg.d_model
    # every cluster's map of every token in one matmul, then each token's own: 3x faster than
    # gathering a [N, d, d] stack of maps (this runs on every rank at every training step)
    every = (x - mu) @ targets.transpose(0, 1).reshape(d, Q * d)  # [N, Q*d]
    y_star = TARGET_SCALE * every.view(tokens, Q, d)[torch.arange(tokens), c]  # [N, d]
    return x, y_star


def collapsed_router(cfg: MoEConfig, mu: torch.Tensor, strength: float = COLLAPSE):
    """The seeded router plus a push along μ on expert 0: every token starts preferring expert 0."""
    router_w = init_weights(cfg)[0].clone()
    router_w[:, 0] += strength * mu / mu.norm()  # logit of expert 0 up by strength · |μ| for every token
    return router_w


def start_router(cfg: MoEConfig, mu: torch.Tensor, start: str = "collapsed"):
    """router_w [d, E] at step 0: collapsed onto expert 0, or the seeded random router."""
    return collapsed_router(cfg, mu) if start == "collapsed" else init_weights(cfg)[0].clone()


def start_weights(cfg: MoEConfig, parts, start: str):
    """Global router_w [d, E], w_in [E, d, h], w_out [E, h, d] at step 0 (w_out in the task's units)."""
    _, w_in, w_out = init_weights(cfg)
    return start_router(cfg, parts[0], start), w_in, TARGET_SCALE * w_out


def optimizer(router_w, w_in, w_out, lr: float) -> Adam:
    """Adam (moe_lab/adam.py); the experts' output weights step in the task's units (see TARGET_SCALE)."""
    return Adam([dict(params=[router_w, w_in], lr=lr), dict(params=[w_out], lr=lr * TARGET_SCALE)])


def check_training(steps, balance: str = "aux", gamma: float = 0.01, start: str = "collapsed", lr: float = 0.01):
    """Every training setting checked in the parent, before any rank runs."""
    if balance not in BALANCE:
        raise ValueError(f"balance={balance!r}: choose one of {BALANCE}")
    if start not in STARTS:
        raise ValueError(f"start={start!r}: choose one of {STARTS}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a whole number >= 1")
    for name, v in (("gamma", gamma), ("lr", lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}={v!r}: must be a finite number >= 0")
    if lr == 0:
        raise ValueError("lr=0: nothing would train; choose a learning rate > 0")


def train_steps_on_rank(ctx, cfg: MoEConfig, tokens: int, balance: str, lr: float, gamma: float, start: str,
                        first: int, count: int) -> list:
    """Steps first .. first+count-1 of one run on this rank: forward, task + balancing losses,
    backward through both AlltoAlls, router gradient all-reduce, Adam; then the bias update.
    Step 0 starts from the seeded weights; later steps continue the run kept in ctx.state("train").
    Returns one small record per step: this rank's counts per expert and its losses."""
    key = (cfg, tokens, balance, lr, gamma, start)
    state = ctx.state("train")
    if first == 0 or state.get("key") != key or state.get("next") != first:
        if first != 0:
            raise RuntimeError(f"training state for step {first} is gone; restart the run from step 0")
        state.clear()  # one run at a time: a new run frees the last one's layer and optimiser
        parts = task(cfg)
        router_w, w_in, w_out = start_weights(cfg, parts, start)
        layer = MoELayer(cfg, ctx.group, ctx.device).load_global_weights(router_w, w_in, w_out)
        state.update(key=key, layer=layer, opt=optimizer(layer.router_w, layer.w_in, layer.w_out, lr), parts=parts)
    layer, opt, parts = state["layer"], state["opt"], state["parts"]
    E = cfg.num_experts
    out = []
    for step in range(first, first + count):
        x, y_star = (t.to(ctx.device) for t in batch(cfg, parts, tokens, step, ctx.rank))
        y, trace = layer(x)
        task_loss = torch.mean((y - y_star) ** 2)
        loss = task_loss + layer.z_loss + (layer.aux_loss if balance in ("aux", "aux+bias") else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        layer.sync_router_grads(dist.ReduceOp.AVG)
        opt.step()
        chosen = np.bincount(trace.chosen.reshape(-1), minlength=E)  # [E] before capacity
        kept = np.bincount(trace.used[trace.used >= 0].reshape(-1), minlength=E)  # [E] served
        if balance in ("bias", "aux+bias"):
            _update_bias(layer, chosen, gamma, ctx.group)
        out.append(dict(chosen=chosen, kept=kept, task_loss=float(task_loss.detach()), aux_loss=trace.aux_loss))
    state["next"] = first + count
    return out


@torch.no_grad()
def _update_bias(layer, chosen, gamma, group):
    """Aux-loss-free balancing: bias_i += γ · sign(mean load − load_i), with the global load."""
    load = torch.as_tensor(chosen, dtype=torch.float32, device=layer.select_bias.device)
    all_reduce(load, group=group)
    layer.select_bias += gamma * torch.sign(load.mean() - load)


def merge_step(step: int, parts: list, world_size: int, balance: str = "aux") -> dict:
    """One history record from every rank's record of one step (the schema of moe_lab.viz.training):
    load_share [E] (f_i, before capacity), gpu_tokens [P] (token copies each GPU's experts received),
    gpu_dropped [P] (copies that wanted the GPU but were dropped), busiest_over_fair, losses."""
    chosen = np.sum([p["chosen"] for p in parts], axis=0)  # [E]
    kept = np.sum([p["kept"] for p in parts], axis=0)  # [E]
    E = len(chosen)
    m = E // world_size
    total = max(int(chosen.sum()), 1)
    share = chosen / total
    gpu_chosen = chosen.reshape(world_size, m).sum(1)  # [P] copies that chose the GPU's experts
    gpu_tokens = kept.reshape(world_size, m).sum(1)  # [P] copies the GPU received
    return dict(step=int(step), load_share=share.tolist(), max_over_mean=float(share.max() * E),
                busiest_over_fair=float(gpu_chosen.max() * world_size / total),
                gpu_tokens=gpu_tokens.tolist(), gpu_dropped=(gpu_chosen - gpu_tokens).tolist(),
                chosen_count=chosen.tolist(), kept_count=kept.tolist(),
                dropped_share=float(1.0 - kept.sum() / total),
                aux_loss=float(np.mean([p["aux_loss"] for p in parts])),
                task_loss=float(np.mean([p["task_loss"] for p in parts])), balance=balance)


def train(cluster, cfg: MoEConfig, steps: int = 100, tokens_per_rank: int = 256, balance: str = "aux",
          lr: float = 0.01, gamma: float = 0.01, start: str = "collapsed", chunk: int = 1):
    """Train on the cluster's ranks; yields one record per step (for live curves), see `merge_step`.
    `chunk` steps run per round trip to the ranks (fewer, larger messages; records still per step).
    Every argument is checked before any rank runs."""
    check_training(steps, balance, gamma, start, lr)
    check_tokens_per_rank(tokens_per_rank)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: must be a whole number >= 1")
    cfg.check_world(cluster.world_size)
    return _train(cluster, cfg, steps, tokens_per_rank, balance, lr, gamma, start, chunk)


def _train(cluster, cfg, steps, tokens_per_rank, balance, lr, gamma, start, chunk):
    if balance not in ("aux", "aux+bias"):
        cfg = cfg.replace(aux_alpha=0.0)
    first = 0
    while first < steps:
        count = min(chunk, steps - first)
        parts = cluster.run(train_steps_on_rank, cfg, tokens_per_rank, balance, lr, gamma, start, first, count)
        for i in range(count):
            yield merge_step(first + i, [p[i] for p in parts], cluster.world_size, balance)
        first += count


def reference_train(cfg: MoEConfig, world_size: int, steps: int, tokens_per_rank: int, balance: str = "aux",
                    lr: float = 0.01, gamma: float = 0.01, start: str = "collapsed"):
    """The same run in one process, without ranks: the ground truth `train` is checked against.

    Every rank's loss is its own task loss (+ its block's aux and z losses); the experts' gradient is
    the sum over ranks (the AlltoAll backward brings each rank's tokens' gradient to the expert), the
    replicated router's the mean. Adam is elementwise, so one Adam over the global weights equals the
    ranks' Adams over their slices. Yields the records `train` yields."""
    from .reference import moe_forward

    check_training(steps, balance, gamma, start, lr)
    check_tokens_per_rank(tokens_per_rank)
    cfg.check_world(world_size)
    if balance not in ("aux", "aux+bias"):
        cfg = cfg.replace(aux_alpha=0.0)
    W, N, E = world_size, tokens_per_rank, cfg.num_experts
    parts = task(cfg)
    weights = [t.clone().requires_grad_() for t in start_weights(cfg, parts, start)]
    opt = optimizer(*weights, lr)
    bias = torch.zeros(E)
    for step in range(steps):
        xs, targets = zip(*(batch(cfg, parts, N, step, r) for r in range(W)))
        y, info = moe_forward(torch.cat(xs), *weights, cfg, world_size=W, bias=bias if bias.any() else None)
        task_r = ((y - torch.cat(targets)) ** 2).view(W, -1).mean(dim=1)  # [W] each rank's task loss
        opt.zero_grad(set_to_none=True)
        (task_r.sum() + info["aux_loss"].sum() + info["z_loss"].sum()).backward()
        weights[0].grad /= W  # the router's gradient is averaged over its replicas
        opt.step()
        chosen, used = info["chosen"].view(W, N, -1), info["used"].view(W, N, -1)
        recs = [dict(chosen=np.bincount(chosen[r].reshape(-1).numpy(), minlength=E),
                     kept=np.bincount(used[r][used[r] >= 0].numpy(), minlength=E),
                     task_loss=float(task_r[r].detach()), aux_loss=float(info["aux_loss"][r].detach())) for r in range(W)]
        if balance in ("bias", "aux+bias"):
            load = torch.as_tensor(np.sum([p["chosen"] for p in recs], axis=0), dtype=torch.float32)
            bias += gamma * torch.sign(load.mean() - load)
        yield merge_step(step, recs, W, balance)

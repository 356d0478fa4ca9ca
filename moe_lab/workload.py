"""The synthetic workload every demo, test and notebook runs: seeded weights and tokens.

One function of (cfg.seed, world size, tokens per rank, skew) gives the same numbers in the
parent (for the reference) and on every rank (for the distributed run), so no tensors need to
travel to the ranks. Everything is drawn on the CPU (device="cpu", whatever torch's default
device is): a CPU generator gives the same numbers everywhere; a rank moves its part to ctx.device.
"""
from __future__ import annotations

import torch

from .config import MoEConfig, check_skew, check_tokens_per_rank, check_world_size

_CPU = torch.device("cpu")


def init_weights(cfg: MoEConfig):
    """Global weights: router_w [d, E], w_in [E, d, h], w_out [E, h, d] (float32, from cfg.seed).

    Scaled so router logits have unit variance for unit-variance tokens. A fine-grained config
    (granularity m) gets the coarse config's experts cut into m pieces (`split_experts`), so both
    hold the same expert parameters; its router [d, E·m] is its own.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    d, m, E = cfg.d_model, cfg.granularity, cfg.num_experts
    router_w = torch.randn(d, E // m, generator=g, device=_CPU) / d**0.5  # the coarse config's router
    w_in, w_out = _ffn_weights(g, E // m, d, cfg.d_hidden * m, m)
    if m > 1:  # drawn after the experts, so they stay the coarse config's
        router_w = torch.randn(d, E, generator=g, device=_CPU) / d**0.5
    return router_w, w_in, w_out


def init_shared_weights(cfg: MoEConfig):
    """The shared experts' weights (w_in [S, d, h], w_out [S, h, d]), or None when num_shared = 0.

    Their own seed stream (cfg.seed + 3), so adding shared experts leaves the routed ones as
    they were; fine-grained, the coarse shared experts cut into m pieces.
    """
    S, m = cfg.num_shared, cfg.granularity
    if S == 0:
        return None
    g = torch.Generator().manual_seed(cfg.seed + 3)
    if S % m:
        return _ffn_weights(g, S, cfg.d_model, cfg.d_hidden, 1)
    return _ffn_weights(g, S // m, cfg.d_model, cfg.d_hidden * m, m)


def _ffn_weights(g, E, d, h, m):
    """E experts of hidden h (w_in [E, d, h], w_out [E, h, d]), each cut into m pieces."""
    from .reference import split_experts

    w_in = torch.randn(E, d, h, generator=g, device=_CPU) / d**0.5
    w_out = torch.randn(E, h, d, generator=g, device=_CPU) / h**0.5
    return (w_in, w_out) if m == 1 else split_experts(w_in, w_out, m)


def make_tokens(cfg: MoEConfig, world_size: int, tokens_per_rank: int, skew: float = 0.0, router_w=None):
    """Tokens x [W*N, d]: rank r's N tokens are rows r*N .. (r+1)*N-1.

    `skew` is the share of tokens that want expert 0 ("what if all tokens want the same
    expert?"): each token is hot with probability `skew`, and a hot token gets a push along the
    direction that raises expert 0's logit alone (the least-norm solution of router_wᵀ v = e_0).
    skew=0: a random, roughly balanced router; skew=1: every token prefers expert 0.
    """
    check_world_size(world_size)
    check_tokens_per_rank(tokens_per_rank)
    check_skew(skew)
    if router_w is None:
        router_w = init_weights(cfg)[0]
    g = torch.Generator().manual_seed(cfg.seed + 1)
    T = world_size * tokens_per_rank
    x = torch.randn(T, cfg.d_model, generator=g, device=_CPU)
    hot = torch.rand(T, generator=g, device=_CPU) < skew  # [T]
    if skew > 0:
        m = cfg.granularity  # fine-grained: push all m pieces of the original expert 0
        v = torch.linalg.pinv(router_w.T)[:, 0] if m == 1 else torch.linalg.pinv(router_w.T)[:, :m].sum(1)  # [d]
        x = x + hot.unsqueeze(1).to(x.dtype) * 8.0 * v
    return x


def upstream_grad(cfg: MoEConfig, world_size: int, tokens_per_rank: int):
    """A fixed dL/dy [W*N, d] so backward checks use the loss L = Σ y · dL/dy."""
    g = torch.Generator().manual_seed(cfg.seed + 2)
    return torch.randn(world_size * tokens_per_rank, cfg.d_model, generator=g, device=_CPU)

"""The synthetic workload every demo, test and notebook runs: seeded weights and tokens.

One function of (cfg.seed, world size, tokens per rank, skew) gives the same numbers in the
parent (for the reference) and on every rank (for the distributed run), so no tensors need to
travel to the ranks.
"""
from __future__ import annotations

import torch

from .config import MoEConfig, check_skew, check_tokens_per_rank, check_world_size


def init_weights(cfg: MoEConfig):
    """Global weights: router_w [d, E], w_in [E, d, h], w_out [E, h, d] (float32, from cfg.seed).

    Scaled so router logits have unit variance for unit-variance tokens.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    d, h, E = cfg.d_model, cfg.d_hidden, cfg.num_experts
    router_w = torch.randn(d, E, generator=g) / d**0.5
    w_in = torch.randn(E, d, h, generator=g) / d**0.5
    w_out = torch.randn(E, h, d, generator=g) / h**0.5
    return router_w, w_in, w_out


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
    x = torch.randn(T, cfg.d_model, generator=g)
    hot = torch.rand(T, generator=g) < skew  # [T]
    if skew > 0:
        v = torch.linalg.pinv(router_w.T)[:, 0]  # [d]: router_wᵀ v = e_0
        x = x + hot.unsqueeze(1).to(x.dtype) * 8.0 * v
    return x


def upstream_grad(cfg: MoEConfig, world_size: int, tokens_per_rank: int):
    """A fixed dL/dy [W*N, d] so backward checks use the loss L = Σ y · dL/dy."""
    g = torch.Generator().manual_seed(cfg.seed + 2)
    return torch.randn(world_size * tokens_per_rank, cfg.d_model, generator=g)

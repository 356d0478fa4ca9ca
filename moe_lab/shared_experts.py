"""Shared experts (DeepSeekMoE, arXiv 2401.06066): S experts every token goes through.

y_t = Σ_s Shared_s(x_t) + Σ_j g_tj · E_{expert_tj}(x_t). The shared experts hold what every token
needs (so the routed experts need not each learn it again); they are replicated on every rank
like data-parallel parameters: each rank applies them to its own tokens, with no AlltoAll, and
their gradients are summed over the ranks after backward, as the router's are.

S experts of the same FFN form, summed, are one FFN of hidden S·h (relu acts elementwise), so
they run as a single pair of matmuls:
  relu(x @ [w_in_0 | w_in_1 | ...]) @ [w_out_0 ; w_out_1 ; ...]  =  Σ_s relu(x @ w_in_s) @ w_out_s
"""
from __future__ import annotations

import torch
from torch import nn


def shared_ffn(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """Σ_s relu(x @ w_in[s]) @ w_out[s]: x [T, d], w_in [S, d, h], w_out [S, h, d] -> [T, d]."""
    S, d, h = w_in.shape
    wide_in = w_in.permute(1, 0, 2).reshape(d, S * h)  # [d, S*h]
    return torch.relu(x @ wide_in) @ w_out.reshape(S * h, d)  # [T, d]


def check_shared(shared, cfg) -> None:
    """`shared=(w_in [S, d, h], w_out [S, h, d])` must match cfg.num_shared: a clear error if not."""
    S, d, h = cfg.num_shared, cfg.d_model, cfg.d_hidden
    if S == 0:
        if shared is not None:
            raise ValueError("shared weights given but cfg.num_shared=0; set num_shared or pass shared=None")
        return
    if shared is None:
        raise ValueError(f"cfg.num_shared={S}: pass the shared experts' weights as shared=(w_in [S, d, h], w_out [S, h, d])")
    w_in, w_out = shared
    if tuple(w_in.shape) != (S, d, h) or tuple(w_out.shape) != (S, h, d):
        raise ValueError(f"shared weights must be w_in [{S}, {d}, {h}] and w_out [{S}, {h}, {d}], "
                         f"got {tuple(w_in.shape)} and {tuple(w_out.shape)}")


class SharedExperts(nn.Module):
    """The S shared experts of one layer, replicated on every rank."""

    def __init__(self, num_shared: int, d_model: int, d_hidden: int, device=None):
        super().__init__()
        self.w_in = nn.Parameter(torch.zeros(num_shared, d_model, d_hidden, device=device))  # [S, d, h]
        self.w_out = nn.Parameter(torch.zeros(num_shared, d_hidden, d_model, device=device))  # [S, h, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shared_ffn(x, self.w_in, self.w_out)

    def sync_grads(self, group, op) -> None:
        """Sum (or average) the gradients over the ranks that hold a replica, as data parallelism does."""
        from .allreduce import all_reduce
        from .comm import note

        for p in (self.w_in, self.w_out):
            if p.grad is not None:
                note("all_reduce", "shared", p.grad)
                all_reduce(p.grad, op, group)

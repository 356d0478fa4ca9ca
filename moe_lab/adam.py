"""Adam (Kingma & Ba, arXiv 1412.6980), written out: the optimiser the balancing runs train with.

Why not `torch.optim.Adam`: its `step()` imports torch's compiler (`torch._dynamo`) the first
time it runs, about 1.6 s of CPU in every process that steps, so 13 s on 8 ranks sharing 2
cores, on the first training step of a notebook (or that much longer for every Cluster to start,
when the ranks' forkserver preloads it). The update is the same as torch's with its defaults
(no weight decay, no amsgrad), in the same order of operations, so runs match it to float
rounding (tests/test_train.py compares them):

    m ← β₁ m + (1 − β₁) g          v ← β₂ v + (1 − β₂) g²          (t = steps so far)
    p ← p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
"""
from __future__ import annotations

import math

import torch


class Adam:
    """Adam over parameter groups: `Adam([dict(params=[...], lr=...), ...], betas, eps)`."""

    def __init__(self, groups, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.groups = [dict(params=list(g["params"]), lr=float(g["lr"])) for g in groups]
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = {p: torch.zeros_like(p) for g in self.groups for p in g["params"]}  # first moment
        self.v = {p: torch.zeros_like(p) for g in self.groups for p in g["params"]}  # second moment

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        correct1, correct2 = 1 - b1**self.t, 1 - b2**self.t  # bias corrections: m, v start at 0
        for g in self.groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.m[p], self.v[p]
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(correct2)).add_(self.eps)
                p.addcdiv_(m, denom, value=-g["lr"] / correct1)

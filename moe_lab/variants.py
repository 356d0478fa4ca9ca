"""Chapter 6's layers side by side: token choice, + shared experts, fine-grained experts, expert choice.

The configs built from one base layer, what each costs on paper (parameters, FLOPs per token,
expert combinations) and what one step of each did on the ranks (per-GPU load, drops, tokens that
no routed expert served, bytes moved), as plain numbers a notebook prints and a figure draws.
Sources: DeepSeekMoE (shared and fine-grained experts, arXiv 2401.06066); expert choice (Zhou et
al., arXiv 2202.09368); GShard / Switch token choice (arXiv 2006.16668, 2101.03961).
"""
from __future__ import annotations

import math

import numpy as np

from .config import MoEConfig


def chapter_variants(base: MoEConfig, num_shared: int = 1, m: int = 4) -> dict[str, MoEConfig]:
    """The chapter's four layers, all from `base`: same tokens, same capacity factor."""
    return {
        "token choice": base,
        f"+ {num_shared} shared": base.replace(num_shared=num_shared),
        f"fine-grained m={m}": base.fine_grained(m),
        "expert choice": base.replace(router="expert_choice", policy="drop"),
    }


def counts(cfg: MoEConfig) -> dict:
    """What a layer costs on paper: expert parameters (routed + shared), FLOPs per token, expert
    combinations a token can choose from. An expert is two d×h matrices (2·d·h weights); one token
    through it is 2 matmuls of 2·d·h FLOPs each. Expert choice: k experts per token on average."""
    d, h, E, k, S = cfg.d_model, cfg.d_hidden, cfg.num_experts, cfg.k, cfg.num_shared
    return dict(routed_params=E * 2 * d * h, shared_params=S * 2 * d * h, params=(E + S) * 2 * d * h,
                flops_per_token=(k + S) * 4 * d * h, combinations=math.comb(E, k))


def rows_once_per_rank(trace) -> np.ndarray:
    """[P] rows each rank would send if a token travelled at most once to each destination rank
    (deduplicated dispatch, as DeepSeek-V3 does per node); our layer sends one row per kept assignment."""
    m = trace.experts_per_rank
    dst = np.where(trace.used >= 0, trace.used // m, -1)  # [P, N, k] destination rank of each assignment
    P = trace.world_size
    out = np.zeros(P, dtype=int)
    for r in range(P):
        for q in range(P):
            out[r] += int((dst[r] == q).any(-1).sum())
    return out


def summarize(trace) -> dict:
    """One step of one variant in numbers (what the chapter's table prints)."""
    row_bytes = trace.bytes_sent.sum() / max(trace.send_rows.sum(), 1)  # d_model × bytes per element
    per_token = trace.experts_per_token if trace.experts_per_token is not None else (trace.used >= 0).sum(-1)
    return dict(
        load=trace.recv_tokens.tolist(), max_over_mean=round(trace.load_imbalance, 2),
        dropped=int(trace.dropped.sum()), no_expert=int((per_token == 0).sum()),
        max_experts=int(per_token.max()), mean_experts=float(per_token.mean()),
        bytes=int(trace.bytes_sent.sum()), bytes_once_per_rank=int(rows_once_per_rank(trace).sum() * row_bytes),
    )


def experts_per_token_counts(trace, upto: int | None = None) -> np.ndarray:
    """How many tokens got 0, 1, 2, ... routed experts (over every rank): [upto + 1]."""
    per_token = (trace.used >= 0).sum(-1).reshape(-1)
    upto = int(per_token.max()) if upto is None else upto
    return np.bincount(per_token, minlength=upto + 1)[: upto + 1]

"""The single-process MoE forward: the ground truth every distributed run is checked against.

It does what W expert-parallel ranks do, in one process, without any communication: each block
of N rows is routed on its own (capacity and slots are per source rank), each assignment is sent
to its expert, and the outputs are summed back with the gates fixed at gating time.
"""
from __future__ import annotations

import torch

from . import routing
from .config import MoEConfig
from .experts import expert_ffn


def route_block(x, router_w, cfg: MoEConfig, bias=None):
    """Routing of one rank's N tokens: the part the layer and the reference share.

    Returns a dict of logits [N, E], probs [N, E], gates [N, k], experts [N, k] (the choices),
    expert [N, k] and slot [N, k] (after capacity; -1 = dropped), capacity, aux_loss, z_loss.
    """
    N, E = x.shape[0], cfg.num_experts
    logits = x @ router_w  # [N, E]
    probs, gates, experts = routing.top_k_gating(logits, cfg.k, cfg.normalize_gates, bias)
    C = routing.capacity(N, E, cfg.capacity_factor, cfg.k)
    expert, slot = routing.assign_slots(probs, experts, C, cfg.policy, cfg.priority)
    return dict(
        logits=logits, probs=probs, gates=gates, experts=experts, expert=expert, slot=slot, capacity=C,
        aux_loss=routing.aux_loss(probs, experts, cfg.aux_alpha),
        z_loss=routing.z_loss(logits, cfg.z_alpha),
    )


def moe_forward(x, router_w, w_in, w_out, cfg: MoEConfig, world_size: int = 1, bias=None):
    """y [W*N, d] for x [W*N, d], routed per block of N rows exactly as W ranks would.

    router_w [d, E], w_in [E, d, h], w_out [E, h, d]. Returns (y, info) where info holds the
    routing tables of all blocks concatenated ([W*N, k] each), `aux_loss` and `z_loss` per block
    ([W], differentiable) and `kept`, `dropped` per expert ([E], summed over blocks).
    """
    cfg.check_world(world_size)
    if x.dim() != 2 or x.shape[1] != cfg.d_model:
        raise ValueError(f"x must be [W*N, d_model={cfg.d_model}], got shape {tuple(x.shape)}")
    if x.shape[0] % world_size:
        raise ValueError(f"x has {x.shape[0]} rows, not a multiple of world_size={world_size}")
    E, k = cfg.num_experts, cfg.k
    ys, blocks = [], []
    for xb in x.chunk(world_size) if x.shape[0] else [x]:
        r = route_block(xb, router_w, cfg, bias)
        N = xb.shape[0]
        flat = r["expert"].reshape(-1)  # [N*k] expert used by assignment t*k+j, -1 dropped
        out = xb.new_zeros(N * k, xb.shape[1])  # [N*k, d]
        for e in range(E):
            a = torch.nonzero(flat == e).squeeze(1)  # assignments served by expert e
            if a.numel():
                out = out.index_copy(0, a, expert_ffn(xb[a // k], w_in[e], w_out[e]))
        ys.append(routing.combine_weighted(N, r["gates"], r["expert"], out.view(N, k, -1)))
        blocks.append(r)
    info = {name: torch.cat([b[name] for b in blocks]) for name in ("probs", "gates", "experts", "expert", "slot")}
    info["capacity"] = blocks[0]["capacity"]
    info["aux_loss"] = torch.stack([b["aux_loss"] for b in blocks])
    info["z_loss"] = torch.stack([b["z_loss"] for b in blocks])
    # counting the concatenated tables is the same as summing each block's counts
    chosen = routing.count_per_expert(info["experts"], E)
    info["kept"] = routing.count_per_expert(info["expert"], E)
    info["dropped"] = chosen - _kept_by_choice(info["experts"], info["expert"], E)
    return torch.cat(ys), info


def _kept_by_choice(experts, expert, E):
    """Kept assignments counted at the expert the token *chose* (so dropped = chosen - this)."""
    kept = expert.reshape(-1) >= 0
    return torch.bincount(experts.reshape(-1)[kept], minlength=E)

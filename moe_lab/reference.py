"""The single-process MoE forward: the ground truth every distributed run is checked against.

It does what W expert-parallel ranks do, in one process, without any communication: each block
of N rows is routed on its own (capacity and slots are per source rank), each assignment is sent
to its expert, and the outputs are summed back with the gates fixed at gating time —
y = Σ_{i ∈ top-k} g_i · E_i(x), the chapter's equation (Shazeer et al. 2017, arXiv 1701.06538).
"""
from __future__ import annotations

from functools import partial

import torch

from . import routing
from .config import MoEConfig
from .expert_choice import route_fn
from .experts import expert_ffn
from .routing import route_block  # noqa: F401  (kept importable here for one release)
from .shared_experts import check_shared, shared_ffn


def moe_forward(x, router_w, w_in, w_out, cfg: MoEConfig, world_size: int = 1, bias=None, shared=None, nodes: int = 1):
    """y [W*N, d] for x [W*N, d], routed per block of N rows exactly as W ranks would.

    router_w [d, E], w_in [E, d, h], w_out [E, h, d]. Returns (y, info) where info holds the
    routing tables of all blocks concatenated ([W*N, k] each: chosen, used, slot, gates; and
    probs [W*N, E]), `aux_loss` and `z_loss` per block ([W], differentiable) and `kept`,
    `dropped` per expert ([E], summed over blocks). "experts"/"expert" are deprecated aliases
    of "chosen"/"used".

    Routing variants (chapter 6): `shared=(w_in [S, d, h], w_out [S, h, d])` adds the S shared
    experts to every token; with cfg.router="expert_choice" the tables are [W*N, E] (column e =
    expert e, -1 where e did not pick the token); `experts_per_token` [W*N] says how many routed
    experts served each token (0 = none).
    Network (chapter 7): `nodes`, the cluster's node count, for node-limited routing (cfg.max_nodes);
    the other network settings (alltoall, chunks, inter_node) change how rows travel, not the result.
    """
    cfg.check_world(world_size)
    cfg.check_nodes(world_size, nodes)
    if x.dim() != 2 or x.shape[1] != cfg.d_model:
        raise ValueError(f"x must be [W*N, d_model={cfg.d_model}], got shape {tuple(x.shape)}")
    if x.shape[0] % world_size:
        raise ValueError(f"x has {x.shape[0]} rows, not a multiple of world_size={world_size}")
    check_shared(shared, cfg)
    E = cfg.num_experts
    ys, blocks = [], []
    for xb in x.chunk(world_size) if x.shape[0] else [x]:
        route = route_fn(cfg) if cfg.max_nodes is None else partial(routing.route_block, nodes=nodes)
        r = route(xb, router_w, cfg, bias)
        N, k = xb.shape[0], r["used"].shape[1]  # k choices, or E columns with expert choice
        flat = r["used"].reshape(-1)  # [N*k] expert used by assignment t*k+j, -1 dropped
        out = xb.new_zeros(N * k, xb.shape[1])  # [N*k, d]
        for e in range(E):
            a = torch.nonzero(flat == e).squeeze(1)  # assignments served by expert e
            if a.numel():
                out = out.index_copy(0, a, expert_ffn(xb[a // k], w_in[e], w_out[e]))
        ys.append(routing.combine_weighted(r["gates"], r["used"], out.view(N, k, -1)))
        blocks.append(r)
    info = {name: torch.cat([b[name] for b in blocks]) for name in ("probs", "gates", "chosen", "used", "slot")}
    info["experts"], info["expert"] = info["chosen"], info["used"]  # deprecated aliases
    info["capacity"] = blocks[0]["capacity"]
    info["aux_loss"] = torch.stack([b["aux_loss"] for b in blocks])
    info["z_loss"] = torch.stack([b["z_loss"] for b in blocks])
    # counting the concatenated tables is the same as summing each block's counts
    chosen = routing.count_per_expert(info["chosen"], E)
    info["kept"] = routing.count_per_expert(info["used"], E)
    info["dropped"] = chosen - _kept_by_choice(info["chosen"], info["used"], E)
    info["experts_per_token"] = (info["used"] >= 0).sum(-1)  # [W*N]
    y = torch.cat(ys)
    if shared is not None:
        y = y + shared_ffn(x, *shared)  # every token through the S shared experts
    return y, info


def split_experts(w_in, w_out, m: int):
    """Fine-grained experts (DeepSeekMoE, arXiv 2401.06066): cut each expert into m pieces.

    w_in [E, d, h], w_out [E, h, d] -> [E*m, d, h/m], [E*m, h/m, d]. Piece e*m + j takes columns
    j*h/m : (j+1)*h/m of w_in[e] and the same rows of w_out[e]. relu acts elementwise, so the m
    pieces of an expert, given the same input and gate, sum to the expert: parameters unchanged.
    Works the same for the shared experts' [S, d, h] / [S, h, d].
    """
    E, d, h = w_in.shape
    if not isinstance(m, int) or isinstance(m, bool) or m < 1 or h % m:
        raise ValueError(f"granularity m={m!r} must be a whole number >= 1 that divides d_hidden={h}")
    if tuple(w_out.shape) != (E, h, d):
        raise ValueError(f"w_out must be [{E}, {h}, {d}] to match w_in, got {tuple(w_out.shape)}")
    pieces_in = w_in.reshape(E, d, m, h // m).permute(0, 2, 1, 3).reshape(E * m, d, h // m)  # [E*m, d, h/m]
    pieces_out = w_out.reshape(E * m, h // m, d)  # [E*m, h/m, d]
    return pieces_in, pieces_out


def _kept_by_choice(chosen, used, E):
    """Kept assignments counted at the expert the token *chose* (so dropped = chosen - this)."""
    kept = (used.reshape(-1) >= 0) & (chosen.reshape(-1) >= 0)  # expert-choice tables mark "not chosen" with -1
    return torch.bincount(chosen.reshape(-1)[kept], minlength=E)

"""Routing as pure tensor math: gating, capacity, slot assignment and the balancing losses.

Nothing here knows about processes. The expert-parallel layer and the single-process
reference both call these functions, which is why they agree token for token.

Shapes: N tokens, E experts, k choices per token, C slots per expert.

Sources: top-k gating (Shazeer et al., arXiv 1701.06538); capacity, the aux loss and the
assignment order of first choices before second ones (GShard, arXiv 2006.16668; Switch Transformer,
arXiv 2101.03961); score priority (batch-prioritised routing, Riquelme et al., arXiv 2106.05974);
the router z-loss (ST-MoE, arXiv 2202.08906); the selection-only bias of aux-loss-free balancing
(DeepSeek-V3, arXiv 2412.19437).
"""
from __future__ import annotations

import math

import torch

from .config import POLICIES, PRIORITIES
from .node_limited import node_limit_bias


def top_k_gating(logits: torch.Tensor, k: int, normalize: bool = True, bias: torch.Tensor | None = None):
    """Softmax over the router logits, then the k best experts per token.

    Returns probs [N, E], gates [N, k] and chosen [N, k] (long, best first: the experts each token
    chose). Ties go to the
    lower expert index (a stable descending sort keeps index order among equals).
    With `normalize` and k > 1 the k gates are rescaled to sum to 1, as in y = Σ g_i E_i(x).
    `bias` [E] (aux-loss-free balancing) shifts only *which* experts are chosen; the gates
    still come from the unbiased probabilities.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, E], got shape {tuple(logits.shape)}")
    E = logits.shape[1]
    if not 1 <= k <= E:
        raise ValueError(f"k={k} but there are {E} experts; choose 1 <= k <= {E}")
    probs = torch.softmax(logits.float(), dim=-1)  # [N, E]
    score = probs if bias is None else probs + bias.to(probs.dtype)
    chosen = torch.sort(score.detach(), dim=-1, descending=True, stable=True).indices[:, :k]  # [N, k]
    gates = probs.gather(1, chosen)  # [N, k]
    if normalize and k > 1:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return probs, gates, chosen


def capacity(num_tokens: int, num_experts: int, capacity_factor: float | None, k: int = 1) -> int | None:
    """Slots per expert per source rank: C = ceil(capacity_factor · k · N / E).

    The chapter writes ceil(capacity_factor · N / E): that is k = 1. With k choices a rank
    sends N·k assignments, so a perfectly balanced router fills N·k/E slots per expert.
    None means dropless.
    """
    if capacity_factor is None:
        return None
    # round() first so that 1.1 * 2 * 500 / 10 = 110.00000000000001 does not become 111
    return int(math.ceil(round(capacity_factor * k * num_tokens / num_experts, 9)))


def aux_loss(probs: torch.Tensor, chosen: torch.Tensor, alpha: float) -> torch.Tensor:
    """Load-balancing loss L_aux = α · E · Σ_i f_i · p_i  (0-dim, differentiable in probs; Switch, arXiv 2101.03961).

    f_i: share of the N·k assignments that chose expert i (before capacity; not differentiable),
    p_i: mean router probability of expert i. Uniform routing gives α; every token putting all
    its probability on one expert (k = 1) gives α · E. The gradient flows through p_i.
    """
    N, E = probs.shape
    f = torch.bincount(chosen.reshape(-1), minlength=E).to(probs.dtype) / max(chosen.numel(), 1)  # [E] share of N·k
    p = probs.mean(dim=0)  # [E]
    return alpha * E * torch.sum(f * p)


def z_loss(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Router z-loss α · mean(logsumexp(logits)^2): keeps logits small so softmax stays stable (ST-MoE)."""
    return alpha * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def assignment_order(probs: torch.Tensor, chosen: torch.Tensor, priority: str = "position") -> torch.Tensor:
    """The order in which the N·k assignments claim slots, as flat indices t·k + j.

    Round j holds every token's j-th choice; rounds go in order (first choices fill buffers
    first). Within a round: token order ("position") or router probability of that choice,
    highest first, ties by token order ("score", batch-prioritised routing).
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority={priority!r}: choose one of {PRIORITIES}")
    N, k = chosen.shape
    tokens = torch.arange(N, device=chosen.device)
    rounds = []
    for j in range(k):
        if priority == "score":
            score = probs.detach().gather(1, chosen[:, j : j + 1]).squeeze(1)  # [N]
            t = torch.sort(score, descending=True, stable=True).indices
        else:
            t = tokens
        rounds.append(t * k + j)
    return torch.cat(rounds)  # [N*k]


def assign_slots(probs, chosen, capacity: int | None, policy: str = "drop", priority: str = "position"):
    """Give every assignment a slot in its expert's buffer, or drop it (GShard's capacity, arXiv 2006.16668).

    Returns (used, slot), both [N, k] long. `used` is the expert actually used (it differs from
    `chosen` only where policy="overflow" moved an assignment); `slot` is its position in that
    expert's buffer, 0..C-1; both are -1 where the assignment was dropped.
    capacity=None is dropless: every assignment is kept.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}: choose one of {POLICIES}")
    N, k = chosen.shape
    E = probs.shape[1]
    order = assignment_order(probs, chosen, priority)  # [N*k] flat indices in claim order
    claims = chosen.reshape(-1)[order]  # [N*k] expert of each assignment, in claim order
    if policy == "overflow" and capacity is not None:
        used, slots = _overflow(probs, chosen, order, capacity)
    else:
        slots = _rank_within_expert(claims, E)  # [N*k] how many earlier claims this expert had
        used = claims.clone()
        if capacity is not None:
            full = slots >= capacity
            used[full] = -1
            slots[full] = -1
    used_out = torch.empty(N * k, dtype=torch.long, device=chosen.device)
    slot_out = torch.empty(N * k, dtype=torch.long, device=chosen.device)
    used_out[order] = used
    slot_out[order] = slots
    return used_out.view(N, k), slot_out.view(N, k)


def _rank_within_expert(chosen: torch.Tensor, E: int) -> torch.Tensor:
    """For a sequence of expert ids, the number of earlier entries with the same id.

    Worked example: chosen = [2, 0, 2, 2, 0] -> [0, 0, 1, 2, 1].
    """
    idx = torch.sort(chosen, stable=True).indices  # grouped by expert, claim order kept
    counts = torch.bincount(chosen, minlength=E)
    starts = torch.cumsum(counts, 0) - counts  # [E] first position of each expert's group
    rank = torch.empty_like(chosen)
    rank[idx] = torch.arange(chosen.numel(), device=chosen.device) - starts[chosen[idx]]
    return rank


def _overflow(probs, chosen, order, capacity: int):
    """Sequential claims: an assignment over capacity moves to the token's next-preferred
    expert (by router probability, skipping its own k choices and substitutes it already
    holds) that has room at that moment; dropped only when none has.

    This is inherently sequential (a substitute takes a slot a later assignment wanted), so it
    is a plain Python loop over the N·k claims.
    """
    N, k = chosen.shape
    E = probs.shape[1]
    pref = torch.sort(probs.detach(), dim=-1, descending=True, stable=True).indices.tolist()  # [N][E]
    exp_l = chosen.tolist()
    held = [set(row) for row in exp_l]  # experts each token already uses or chose
    fill = [0] * E
    used, slots = [], []
    for a in order.tolist():
        t, j = divmod(a, k)
        e = exp_l[t][j]
        if fill[e] >= capacity:
            e = next((s for s in pref[t] if s not in held[t] and fill[s] < capacity), -1)
            if e >= 0:
                held[t].add(e)
        if e >= 0:
            slots.append(fill[e])
            fill[e] += 1
        else:
            slots.append(-1)
        used.append(e)
    dev = chosen.device
    return torch.tensor(used, dtype=torch.long, device=dev), torch.tensor(slots, dtype=torch.long, device=dev)


def count_per_expert(used: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Assignments per expert [E] from an expert table [N, k] (-1 = dropped is ignored)."""
    e = used.reshape(-1)
    return torch.bincount(e[e >= 0], minlength=num_experts)


def combine_weighted(gates, used, expert_out) -> torch.Tensor:
    """y_t = Σ_j g_tj · out_tj over kept assignments; a dropped one contributes zero.

    gates, used [N, k]; expert_out [N, k, d] holds each assignment's expert output (any value
    where dropped). The gates are the ones fixed at gating time: no renormalisation after drops.
    """
    kept = (used >= 0).to(expert_out.dtype).unsqueeze(-1)  # [N, k, 1]
    return (gates.to(expert_out.dtype).unsqueeze(-1) * kept * expert_out).sum(dim=1)  # [N, d]


def route_block(x, router_w, cfg, bias=None, nodes: int = 1) -> dict:
    """Routing of one rank's N tokens, as the layer and the reference both do it.

    Returns a dict of logits [N, E], probs [N, E], gates [N, k], chosen [N, k] (the experts each
    token chose), used [N, k] and slot [N, k] (after capacity; -1 = dropped), capacity, aux_loss,
    z_loss. The old keys "experts" (= chosen) and "expert" (= used) are kept for one release.
    With cfg.max_nodes, `nodes` is the cluster's node count (node-limited routing, moe_lab.node_limited).
    """
    N, E = x.shape[0], cfg.num_experts
    logits = x @ router_w  # [N, E]
    if cfg.max_nodes is not None:
        bias = node_limit_bias(logits, cfg, nodes, bias)  # [N, E], -inf outside the token's M nodes
    probs, gates, chosen = top_k_gating(logits, cfg.k, cfg.normalize_gates, bias)
    C = capacity(N, E, cfg.capacity_factor, cfg.k)
    used, slot = assign_slots(probs, chosen, C, cfg.policy, cfg.priority)
    return dict(
        logits=logits, probs=probs, gates=gates, chosen=chosen, used=used, slot=slot, capacity=C,
        aux_loss=aux_loss(probs, chosen, cfg.aux_alpha), z_loss=z_loss(logits, cfg.z_alpha),
        experts=chosen, expert=used,  # deprecated aliases
    )

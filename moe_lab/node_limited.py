"""Node-limited routing: each token's k experts lie on at most M nodes (DeepSeek-V3, arXiv 2412.19437, §2.1.2).

Past one node the AlltoAll's bytes go over the slow inter-node network. DeepSeek-V3 bounds them:
a token first picks at most M nodes, by the sum of its top-(k/M) expert scores on each node, and
then its top-k experts among those nodes' experts only. So every token crosses to at most M
nodes (M − 1 besides its own, if its own is picked), whatever its router says.

Experts are laid out node by node: with E experts on n nodes, node b holds experts
b·E/n … (b+1)·E/n − 1 (moe_lab.topology.expert_node).
"""
from __future__ import annotations

import torch


def allowed_nodes(score: torch.Tensor, k: int, max_nodes: int, nodes: int) -> torch.Tensor:
    """The M nodes each token may use: [N, n] bool.

    score [N, E] (router probabilities, plus the aux-free bias when it is on). A node's score is
    the sum of its top-(k/M) expert scores; the M best nodes are kept, ties to the lower node.
    Worked example (E = 4, n = 2, k = 2, M = 1): score row [0.4, 0.0, 0.3, 0.3]
      node 0 = top-2 of [0.4, 0.0] = 0.4, node 1 = top-2 of [0.3, 0.3] = 0.6 -> node 1 only,
      although expert 0 is the token's single best expert.
    """
    N, E = score.shape
    per_node = score.view(N, nodes, E // nodes)  # [N, n, E/n]
    node_score = per_node.topk(k // max_nodes, dim=-1).values.sum(-1)  # [N, n]
    best = torch.sort(node_score, dim=-1, descending=True, stable=True).indices[:, :max_nodes]  # [N, M]
    return torch.zeros(N, nodes, dtype=torch.bool, device=score.device).scatter_(1, best, True)


def node_limit_bias(logits: torch.Tensor, cfg, nodes: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A selection bias [N, E] that is −inf on the experts of the nodes a token may not use.

    Added to the scores *only for choosing* (routing.top_k_gating's `bias`), so the token's top-k
    falls among its M nodes while its gates still come from the unbiased probabilities.
    """
    probs = torch.softmax(logits.detach().float(), dim=-1)  # [N, E]
    score = probs if bias is None else probs + bias.to(probs.dtype)
    allowed = allowed_nodes(score, cfg.k, cfg.max_nodes, nodes)  # [N, n]
    allowed = allowed.repeat_interleave(cfg.num_experts // nodes, dim=1)  # [N, E]
    blocked = torch.zeros_like(score).masked_fill(~allowed, float("-inf"))
    return blocked if bias is None else blocked + bias.to(score.dtype)

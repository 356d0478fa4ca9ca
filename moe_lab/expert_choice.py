"""Expert-choice routing (Zhou et al., arXiv 2202.09368): the experts pick the tokens.

Token choice (top-k) lets every token pick its k experts, so a popular expert overflows and
drops. Expert choice turns the table: each expert e takes the C tokens of this rank's block with
the highest router probability probs[:, e]. Every expert gets exactly C tokens (perfect balance by
construction, no aux loss), but a token may be picked by 0, 1, ... or all E experts.

The choice looks at every token of the block at once, so a token's route depends on the tokens
after it: a decoder generating one token at a time cannot route this way (it is not causal).

Tables come out token-major, one column per expert ([N, E]), in the same form as top-k's [N, k]
tables, so dispatch, combine, the reference and the trace handle both the same way:
  used[t, e] = e if expert e chose token t, else -1;  slot[t, e] = rank of t in e's choice;
  gates[t, e] = probs[t, e] where chosen (no renormalisation), 0 elsewhere.
Worked example (N = 3, E = 2, C = 2): probs = [[.9, .1], [.6, .4], [.2, .8]]
  expert 0 takes tokens [0, 1], expert 1 takes [2, 1]
  used = [[0, -1], [0, 1], [-1, 1]], slot = [[0, -1], [1, 1], [-1, 0]]: token 1 got two experts.
"""
from __future__ import annotations

import torch

from . import routing


def select_tokens(probs: torch.Tensor, capacity: int) -> torch.Tensor:
    """Each expert's top-C tokens, best first: probs [N, E] -> tokens [E, min(C, N)] (long).

    Ties go to the lower token index (a stable descending sort keeps index order among equals).
    """
    N = probs.shape[0]
    C = min(int(capacity), N)
    return torch.sort(probs.detach().T, dim=1, descending=True, stable=True).indices[:, :C]  # [E, C]


def choice_tables(probs: torch.Tensor, tokens: torch.Tensor):
    """Expert-major choices [E, C] -> token-major tables used, slot, gates, each [N, E]."""
    N, E = probs.shape
    C = tokens.shape[1]
    dev = probs.device
    e_idx = torch.arange(E, device=dev).unsqueeze(1).expand(E, C)  # [E, C] the expert of each pick
    s_idx = torch.arange(C, device=dev).unsqueeze(0).expand(E, C)  # [E, C] its slot
    used = torch.full((N, E), -1, dtype=torch.long, device=dev)
    slot = torch.full((N, E), -1, dtype=torch.long, device=dev)
    used[tokens, e_idx] = e_idx
    slot[tokens, e_idx] = s_idx
    gates = torch.where(used >= 0, probs, torch.zeros((), dtype=probs.dtype, device=dev))  # [N, E]
    return used, slot, gates


def route_block(x, router_w, cfg, bias=None) -> dict:
    """Expert-choice routing of one rank's N tokens, with the same keys as routing.route_block.

    chosen = used (an expert's choice is never dropped), tables [N, E]; capacity = C per expert;
    aux_loss = 0 (balanced by construction); the z-loss still applies to the logits.
    `bias` (aux-loss-free balancing) is ignored: every expert already gets exactly C tokens.
    """
    N, E = x.shape[0], cfg.num_experts
    logits = x @ router_w  # [N, E]
    probs = torch.softmax(logits.float(), dim=-1)  # [N, E]
    C = routing.capacity(N, E, cfg.capacity_factor, cfg.k)
    used, slot, gates = choice_tables(probs, select_tokens(probs, C))  # [N, E] each
    return dict(
        logits=logits, probs=probs, gates=gates, chosen=used, used=used, slot=slot, capacity=C,
        aux_loss=probs.new_zeros(()), z_loss=routing.z_loss(logits, cfg.z_alpha),
        experts=used, expert=used,  # deprecated aliases, as in routing.route_block
    )


def route_fn(cfg):
    """The routing function a config asks for: token choice (top-k) or expert choice."""
    return route_block if cfg.router == "expert_choice" else routing.route_block


def experts_per_token(used) -> torch.Tensor:
    """How many experts serve each token: [N, k or E] table -> [N] (0 = the token got no expert)."""
    return (used >= 0).sum(-1)

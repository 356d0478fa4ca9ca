"""One token's round trip as numbers: the rows the expert ranks really received and sent back.

The chapter's answer to "how does it get back?" is y = g₁·E3(x) + g₂·E7(x). A whole-output
equality with the reference proves it only in bulk; this rank function runs the layer's own pieces
(`route_block`, `send_order`, the count exchange and `ragged_exchange`, i.e. the dispatch and
combine AlltoAlls of GShard, arXiv 2006.16668) and keeps, for one traced token, the row each expert
rank received, the row its expert returned, and what came back to the token's rank, so a notebook
can add them up by hand. One expert per rank, ragged buffers: the chapter's case.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .dispatch import exchange_counts, make_local_experts, ragged_exchange, send_order
from .routing import combine_weighted, route_block
from .workload import init_weights, make_tokens


def roundtrip_on_rank(ctx, cfg, tokens_per_rank: int, src_rank: int, token: int, recv_rows: dict):
    """Dispatch → expert → combine on every rank; return the traced token's rows on this rank.

    recv_rows {expert rank: receive-buffer row} says where the token's copies should sit (from
    `StepTrace.hops`): the returned rows let the caller check that claim against the real buffer.
    Every rank returns {"received": {row: x row [d]}, "expert_out": {row: E(x) row [d]}}; the token's
    own rank adds "x" [d], "gates" [k], "used" [k], "send_rows" [k] (-1 = dropped), "returned" [k, d]
    (the rows combine brought back, in choice order) and "y" [d] (the layer's combine of them).
    """
    if cfg.dispatch != "ragged" or cfg.experts_per_rank(ctx.world_size) != 1:
        raise ValueError("roundtrip_on_rank follows the chapter's case: dispatch='ragged' and one expert per rank")
    P, N, r, k = ctx.world_size, tokens_per_rank, ctx.rank, cfg.k
    router_w, w_in, w_out = (w.to(ctx.device) for w in init_weights(cfg))
    x = make_tokens(cfg, P, N, 0.0, router_w.cpu())[r * N : (r + 1) * N].to(ctx.device)  # [N, d] this rank's tokens
    route = route_block(x, router_w, cfg)  # gates, used, slot: [N, k]
    order, counts = send_order(route["used"], route["slot"], cfg.num_experts)  # [S], [E]
    recv_counts = exchange_counts(counts, ctx.group)  # [P, 1]
    expert = make_local_experts(w_in[r : r + 1], w_out[r : r + 1])
    seen = {}

    def local_expert(e, rows):  # rows [R, d]: the whole receive buffer (one local expert)
        seen["received"], seen["expert_out"] = rows, expert(e, rows)
        return seen["expert_out"]

    back = ragged_exchange(x, order, counts, recv_counts, k, local_expert, ctx.group, lambda _: nullcontext())
    mine = [recv_rows[r]] if r in recv_rows else []
    # rows are views of whole buffers: clone so only the row travels back to the parent
    result = {name: {row: seen[name][row].cpu().clone() for row in mine} for name in ("received", "expert_out")}
    if r == src_rank:
        out = x.new_zeros(N * k, x.shape[1]).index_copy(0, order, back)  # [N*k, d] by (token, choice)
        y = combine_weighted(route["gates"], route["used"], out.view(N, k, -1))  # [N, d]
        row_of = torch.full((N * k,), -1, dtype=torch.long, device=x.device)
        row_of[order] = torch.arange(order.numel(), device=x.device)  # send-buffer row of each assignment
        result.update(x=x[token], gates=route["gates"][token], used=route["used"][token],
                      send_rows=row_of[token * k : (token + 1) * k], returned=out.view(N, k, -1)[token], y=y[token])
        result.update({name: v.detach().cpu().clone() for name, v in result.items() if torch.is_tensor(v)})
    return result

"""AlltoAll dispatch and combine: how a token gets to its experts' GPUs and back.

Two AlltoAlls per layer (the chapter's "Communication Pattern"): dispatch sends every kept
assignment's token to the rank that holds its expert; combine sends the expert outputs back
along the same rows. Both are one plain `all_to_all_single` inside an autograd Function whose
backward is the reverse AlltoAll (the gradient of a dispatch is a combine and vice versa): the
same maths as torch's functional collectives, without their per-call wrapping (and without
importing torch._dynamo on every rank).

Two ways to lay out the buffers:
  ragged  only the kept rows travel; ranks first exchange how many rows they will send
          (the count exchange), then one all_to_all_single with uneven splits.
  padded  every expert gets exactly S rows from every source rank ([E, S, d], S = C), unused
          rows are zeros: equal splits and no count exchange, but bytes and expert FLOPs grow
          with the capacity factor, not with the tokens (GShard / Switch).
The buffer layout itself is explained once, in moe_lab/trace.py (NOTE there).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .comm import note
from .experts import expert_ffn, tp_expert_ffn


def _all_to_all(x, out_splits, in_splits, group, async_op=False):
    """One all_to_all_single: x [sum(in_splits), d] -> [sum(out_splits), d] (None = equal splits).

    async_op: return (y, work) at once; y holds the rows only after work.wait()."""
    rows = x.shape[0] if out_splits is None else sum(out_splits)
    y = x.new_empty((rows, *x.shape[1:]))
    work = dist.all_to_all_single(y, x.contiguous(), out_splits, in_splits, group=group, async_op=async_op)
    return (y, work) if async_op else y


class _AllToAll(torch.autograd.Function):
    """AlltoAll whose gradient is the AlltoAll back along the same rows (splits swapped).

    box None: forward waits for the rows. box a dict: forward only issues the AlltoAll and puts its
    work handle in box["work"] (the chunked pipeline overlaps it with experts): y's rows are in
    flight until the caller waits on it. The backward is the blocking AlltoAll back either way."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group, box):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        if box is None:
            return _all_to_all(x, out_splits, in_splits, group)
        y, box["work"] = _all_to_all(x, out_splits, in_splits, group, async_op=True)
        return y

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        note("all_to_all (backward)", "ep", grad)  # backward sends dL/dy back: count it too
        return _all_to_all(grad, in_splits, out_splits, ctx.group), None, None, None, None


def all_to_all(x, out_splits, in_splits, group):
    """The layer's AlltoAll: differentiable when x needs a gradient, a bare collective otherwise."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _AllToAll.apply(x, out_splits, in_splits, group, None)
    return _all_to_all(x, out_splits, in_splits, group)


def all_to_all_async(x, out_splits, in_splits, group):
    """Issue the AlltoAll and return (y, work) at once: read y only after work.wait().
    Differentiable like all_to_all (plain torch.distributed: no functional collectives, whose
    first call imports torch's compiler on every rank, 1.6 s each)."""
    if torch.is_grad_enabled() and x.requires_grad:
        box = {}
        y = _AllToAll.apply(x, out_splits, in_splits, group, box)
        return y, box["work"]
    return _all_to_all(x, out_splits, in_splits, group, async_op=True)


def _a2a(x, out_splits, in_splits, group):
    note("all_to_all", "ep", x)
    return all_to_all(x, out_splits, in_splits, group)


def send_order(used: torch.Tensor, slot: torch.Tensor, num_experts: int):
    """Where each kept assignment sits in the expert-major send buffer.

    used, slot [N, k] (the expert used and its slot; -1 = dropped). Returns (order, counts): order [S] holds the flat
    assignment index t*k+j of each send-buffer row; counts [E] the kept rows per expert.
    Slots of one expert are 0..count-1, so row = offset[expert] + slot.
    Worked example (E = 2): used = [[1, 0], [1, -1]], slot = [[0, 0], [1, -1]]
      counts = [1, 2], offsets = [0, 1]; rows: a0 (e1, s0) -> 1, a1 (e0, s0) -> 0, a2 (e1, s1) -> 2
      order = [1, 0, 2].
    """
    flat_e, flat_s = used.reshape(-1), slot.reshape(-1)
    kept = torch.nonzero(flat_e >= 0).squeeze(1)  # [S] assignment ids
    counts = torch.bincount(flat_e[kept], minlength=num_experts)  # [E]
    offsets = torch.cumsum(counts, 0) - counts
    row = offsets[flat_e[kept]] + flat_s[kept]  # [S]
    order = torch.empty_like(kept)
    order[row] = kept
    return order, counts


def exchange_counts(counts: torch.Tensor, group) -> torch.Tensor:
    """The count exchange: counts [E] this rank sends per expert -> [P, m] rows each source
    rank will send to each of this rank's m local experts. A tiny AlltoAll of its own."""
    P = dist.get_world_size(group)
    recv = torch.empty_like(counts)
    note("all_to_all (counts)", "ep", counts)
    dist.all_to_all_single(recv, counts, group=group)  # equal splits of m counts per rank
    return recv.view(P, -1)


def ragged_exchange(x, order, counts, recv_counts, k, local_experts, group, timer, a2a=_a2a):
    """Dispatch the kept rows, run the local experts, combine back. Returns [S, d] in send order.

    x [N, d]; order [S]; counts [E] sent per expert; recv_counts [P, m] received per
    (source, local expert); local_experts(e, rows) runs local expert e on rows [T, d].
    `a2a(x, out_splits, in_splits, group)` is the AlltoAll (flat by default; moe_lab.hierarchical
    and moe_lab.links provide others with the same signature).
    """
    P, m = recv_counts.shape
    send_splits = counts.view(P, m).sum(1).tolist()  # rows to each destination rank
    recv_splits = recv_counts.sum(1).tolist()  # rows from each source rank
    with timer("dispatch"):
        recv = a2a(x[order // k], recv_splits, send_splits, group)  # [R, d] source-major
    with timer("experts"):
        out = run_local_experts(recv, recv_counts, local_experts)
    with timer("combine"):
        return a2a(out, send_splits, recv_splits, group)  # [S, d] back in send order


def run_local_experts(recv, recv_counts, local_experts):
    """recv [R, d] source-major, recv_counts [P, m] -> expert outputs [R, d] in the same rows."""
    P, m = recv_counts.shape
    # NOTE (layout): received rows are source-major, experts want theirs together.
    # P = 2, m = 2, recv_counts = [[2, 3], [1, 4]] (rows [r0e0, r0e1, r1e0, r1e1]):
    #   received  [r0e0 r0e0 | r0e1 r0e1 r0e1 | r1e0 | r1e1 r1e1 r1e1 r1e1]   (source-major)
    #   grouped   [r0e0 r0e0 r1e0 | r0e1 r0e1 r0e1 r1e1 r1e1 r1e1 r1e1]        (expert-major)
    # a stable sort by local expert id does it; argsort(perm) puts outputs back before combine.
    if m == 1:
        return local_experts(0, recv)
    sizes = recv_counts.sum(0).tolist()  # [m] rows per local expert
    local_id = torch.arange(m, device=recv.device).repeat(P).repeat_interleave(recv_counts.reshape(-1))
    perm = torch.sort(local_id, stable=True).indices
    grouped = recv[perm].split(sizes)
    out = torch.cat([local_experts(e, rows) for e, rows in enumerate(grouped)])
    return out[torch.argsort(perm)]


def padded_exchange(x, order, counts, S, k, local_experts, group, timer, a2a=_a2a):
    """The same trip with fixed [E, S, d] buffers and equal splits. Returns [sum(counts), d].

    NOTE (layout): row of an assignment in the send buffer = expert * S + slot (slots < S by
    construction); after the equal-split AlltoAll a rank holds [source P, local expert m, slot S, d]:
    source-major again, but every chunk has the same size, so a view (no permutation) groups it.
    """
    E, d = counts.numel(), x.shape[1]
    P = dist.get_world_size(group)
    m = E // P
    expert_of_row = torch.repeat_interleave(torch.arange(E, device=x.device), counts)  # [S_kept]
    first = torch.cumsum(counts, 0) - counts
    pos = expert_of_row * S + (torch.arange(order.numel(), device=x.device) - first[expert_of_row])
    with timer("dispatch"):
        send = x.new_zeros(E * S, d).index_copy(0, pos, x[order // k])  # [E*S, d], zeros = padding
        recv = a2a(send, None, None, group).view(P, m, S, d)  # [source, local expert, slot, d]
    with timer("experts"):
        out = torch.stack([local_experts(e, recv[:, e].reshape(P * S, d)).view(P, S, d) for e in range(m)], dim=1)
    with timer("combine"):
        back = a2a(out.reshape(P * m * S, d), None, None, group)  # [E*S, d] in send layout
    return back[pos]


def make_local_experts(w_in, w_out, tp_group=None):
    """local_experts(e, rows) for this rank's m experts w_in [m, d, h], w_out [m, h, d]; with a
    TP group, w_in / w_out are this rank's column / row shards and the partial sums are reduced."""
    if tp_group is None:
        return lambda e, rows: expert_ffn(rows, w_in[e], w_out[e])
    return lambda e, rows: tp_expert_ffn(rows, w_in[e], w_out[e], tp_group)

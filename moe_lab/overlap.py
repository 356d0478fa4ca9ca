"""Chunked overlap: hide the AlltoAll behind the experts by pipelining chunks of tokens.

Routing, capacity and slots are decided for the rank's whole block first (so the result is the
unchunked one, bit for bit). Then the N tokens are cut into c contiguous chunks
(torch.tensor_split) and the kept assignments of each chunk make the trip on their own:

    time ─►  dispatch 0 │ dispatch 1 ······│ dispatch 2 ······│
                        │ experts 0        │ experts 1        │ experts 2
                        │                  │ combine 0 ·······│ combine 1 ···  combine 2
while the experts run chunk i, the dispatch of i+1 and the combine of i−1 are in flight (async
collectives), so the link works while the cores compute. Tutel (arXiv 2206.03382) and DeepSeek-V3
(arXiv 2412.19437, §3.2) overlap this way; the waiting that is left is the exposed communication.
"""
from __future__ import annotations

import torch

from .dispatch import run_local_experts


def chunk_send_order(used: torch.Tensor, slot: torch.Tensor, num_experts: int):
    """The send-buffer rows of a chunk's kept assignments: expert-major, slot order within an expert.

    used, slot [Nc, k] of the chunk (slots are the whole block's, so not 0..count-1 here).
    Returns (order [S] flat assignment ids t·k+j local to the chunk, counts [E]).
    """
    flat_e, flat_s = used.reshape(-1), slot.reshape(-1)
    kept = torch.nonzero(flat_e >= 0).squeeze(1)  # [S]
    key = flat_e[kept] * (int(flat_s.max()) + 1 if flat_s.numel() else 1) + flat_s[kept]  # expert, then slot
    order = kept[torch.sort(key, stable=True).indices]
    return order, torch.bincount(flat_e[kept], minlength=num_experts)


def pipelined_exchange(x, used, slot, k, num_experts, local_experts, meter, chunks: int):
    """Dispatch, experts and combine of x's kept assignments in `chunks` pipelined chunks.

    x [N, d]; used, slot [N, k]; meter: moe_lab.links.LinkMeter (issues, counts, emulates, times).
    Returns out [N·k, d]: each kept assignment's expert output at row t·k + j (zeros where dropped).
    """
    N, d = x.shape
    W = meter.W
    m = num_experts // W
    bounds = [(int(t[0]), int(t[-1]) + 1) for t in torch.tensor_split(torch.arange(N), chunks)]
    plans = []
    for t0, t1 in bounds:
        order, counts = chunk_send_order(used[t0:t1], slot[t0:t1], num_experts)
        plans.append((order + t0 * k, counts.view(W, m)))  # order: block-wide assignment ids
    # one count exchange for all chunks: to rank w go the m counts of each chunk [c, m]
    counts = torch.stack([c for _, c in plans], dim=1)  # [W dst, c, m]
    with meter.phase("count_exchange"):
        recv_counts = meter.a2a(counts.reshape(-1), name="all_to_all (counts)").view(W, chunks, m)

    def issue_dispatch(i):
        order, cnt = plans[i]
        send, recv = cnt.sum(1).tolist(), recv_counts[:, i].sum(1).tolist()
        return meter.start(x[order // k], recv, send, name="dispatch", chunk=i)

    out = x.new_zeros(N * k, d)  # [N*k, d]
    pending = [issue_dispatch(0)]
    combines = []
    for i in range(chunks):
        if i + 1 < chunks:
            pending.append(issue_dispatch(i + 1))  # in flight while the experts run chunk i
        rows = meter.finish(pending[i])  # [R_i, d] source-major
        with meter.phase("experts", i):
            y = run_local_experts(rows, recv_counts[:, i], local_experts)
        send, recv = plans[i][1].sum(1).tolist(), recv_counts[:, i].sum(1).tolist()
        combines.append(meter.start(y, send, recv, name="combine", chunk=i))
        if i >= 1:
            back = meter.finish(combines[i - 1])  # combine i-1 had the experts of i to land
            out = out.index_copy(0, plans[i - 1][0], back)
    out = out.index_copy(0, plans[-1][0], meter.finish(combines[-1]))
    return out


def hidden_share(trace) -> float:
    """Share of the AlltoAlls' time in flight that the ranks spent doing something else.

    From the ranks' timestamps: 1 − Σ waiting / Σ in flight over every collective of the step. Without
    chunks a rank waits on each collective from issue to done (≈ 0 hidden); with chunks the experts of
    one chunk run while other chunks travel.
    """
    flight = sum(e["end"] - e["start"] for e in trace.timeline if e["kind"] == "comm")
    wait = sum(e["end"] - e["start"] for e in trace.timeline if e["kind"] == "wait")
    return 1.0 - wait / flight if flight > 0 else 0.0

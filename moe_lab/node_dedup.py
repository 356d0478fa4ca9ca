"""Send once per node: a token crosses the network once for every node that holds one of its experts.

A flat (or hierarchical) AlltoAll sends one row per (token, expert): a token whose k experts all sit
on another node crosses the network k times. DeepSeek-V3 (arXiv 2412.19437, §2.1.2 and §3.2.2)
sends each token *once per destination node*, over the network to the GPU with the sender's own
index on that node, which forwards it over NVLink to its experts there; together with node-limited
routing (M nodes per token) a token costs at most M network transfers.
`MoEConfig(alltoall="node_dedup")`. W ranks on n nodes, G = W / n; rank (a, l) is node a, local l.

  1. inter-node  rank (a, l) sends x[t] ONCE to rank (b, l) for each node b that holds at least one of
                 token t's kept experts (b = a: to itself, no message), with a small side tensor: t's
                 routing row (gates and expert ids), so the receiver can tell which of its node's
                 experts want the token. Metadata bytes are counted as a collective of their own.
  2. intra-node  rank (b, l) expands each received token to its experts on node b
                 (dispatch.ragged_exchange with sends only inside the node: counts, rows, ...
  3. experts     ... the experts run, ...
  4. combine     ... and their outputs come back inside the node). Rank (b, l) sums the gate-weighted
                 outputs of node b's experts per token, so ONE row per (token, node) crosses back;
                 the source adds up its tokens' rows from every node.
Routing, capacity and slots are decided at the source, as in every other transport, so drops and
gates are the reference's; only the way the rows travel changes.

Worked example: W = 4, n = 2, G = 2, E = 4 (expert e on rank e, on node e // 2). Rank 0 = (0, 0) has
  t0 → experts {2, 3}, t1 → {0, 3}, t2 → {0, 1}.
  flat:       t0 crosses twice (to ranks 2 and 3), t1 once (to rank 3): 3 rows over the network.
  send once:  rank 2 = (1, 0) gets t0 and t1, once each: 2 rows (t1 and t2 stay on rank 0 for node 0).
              Rank 2 gives t0 to expert 2 (itself) and to rank 3 (expert 3), t1 to rank 3, and sends
              back g·E2(t0) + g'·E3(t0) and g''·E3(t1): 2 rows back instead of 3.
With M = 1 every token's experts share one node, so at most one row per token crosses each way: with
k = 2 on 2 nodes, half what the flat AlltoAll sends.
"""
from __future__ import annotations

import torch

from .dispatch import ragged_exchange
from .routing import combine_weighted
from .topology import ranks_per_node


def nodes_hit(used: torch.Tensor, num_experts: int, nodes: int) -> torch.Tensor:
    """[N, n] bool: node b holds at least one of token t's kept experts (used [N, k], -1 = dropped).

    Example (E = 4, n = 2): used [[2, 3], [0, 3], [0, -1]] -> [[F, T], [T, T], [T, F]].
    """
    node = torch.where(used >= 0, used // (num_experts // nodes), nodes)  # [N, k]; n = "nowhere" (dropped)
    hit = torch.zeros(used.shape[0], nodes + 1, dtype=torch.bool, device=used.device).scatter_(1, node, True)
    return hit[:, :nodes]


def _expert_major(used: torch.Tensor, num_experts: int):
    """The send buffer dispatch.ragged_exchange expects: order [S] of the kept assignments (flat ids
    i·k + j) grouped by expert, in assignment order within an expert; counts [E] rows per expert."""
    flat = used.reshape(-1)
    kept = torch.nonzero(flat >= 0).squeeze(1)  # [S]
    order = kept[torch.sort(flat[kept], stable=True).indices]
    return order, torch.bincount(flat[kept], minlength=num_experts)


def _named(meter, *names):
    """An `a2a` for dispatch.ragged_exchange whose successive calls carry these collective names."""
    it = iter(names)
    return lambda x, out_splits, in_splits, group=None: meter.a2a(x, out_splits, in_splits, name=next(it))


def node_dedup_exchange(x, gates, used, local_experts, meter, nodes: int, num_experts: int) -> torch.Tensor:
    """y [N, d] = Σ_j g_tj · E_{used_tj}(x_t) over kept assignments, moving one row per (token, node).

    x [N, d]; gates, used [N, k] (used -1 = dropped); local_experts(e, rows) runs this rank's expert e;
    meter: links.LinkMeter, which issues, counts (per link type and collective), emulates and times
    every AlltoAll. Differentiable in x, gates and the experts' weights.
    """
    W, E = meter.W, num_experts
    G = ranks_per_node(W, nodes)
    a, l = divmod(meter.rank, G)
    N, k = used.shape
    d = x.shape[1]
    if E > 2 / torch.finfo(x.dtype).eps:
        raise ValueError(f"alltoall='node_dedup' sends expert ids as {x.dtype} numbers, exact only up to "
                         f"{int(2 / torch.finfo(x.dtype).eps)}; num_experts={E}: use float32 tokens")
    # ---- stage 1 plan: token t goes to rank (b, l) for every node b in hit[t]
    hit = nodes_hit(used, E, nodes)  # [N, n]
    tok = torch.nonzero(hit.t())[:, 1]  # [S1] send-buffer row -> token; node-major, token order within
    peer = [b * G + l for b in range(nodes)]  # my peer on every node (on mine: myself)
    send1, recv1 = [0] * W, [0] * W  # rows to / from each rank: only peers are non-zero
    one = [1 if j % G == l else 0 for j in range(W)]  # one count to every peer
    with meter.phase("count_exchange"):
        got = meter.a2a(hit.sum(0), one, one, name="all_to_all (counts, inter-node)")  # [n] rows each peer sends me
    for b, p in enumerate(peer):
        send1[p], recv1[p] = int(hit[:, b].sum()), int(got[b])
    # the side tensor: gates, then expert ids as numbers of x's dtype (one message per peer, not two)
    meta = torch.cat([gates.to(x.dtype), used.to(x.dtype)], dim=1)  # [N, 2k]
    with meter.phase("dispatch"):
        x1 = meter.a2a(x[tok], recv1, send1, name="dispatch (once per node, inter-node)")  # [R1, d] source-node-major
        m1 = meter.a2a(meta[tok], recv1, send1, name="dispatch metadata (gates, expert ids)")  # [R1, 2k]
    g1, ids = m1[:, :k], m1[:, k:].detach().round().long()  # [R1, k] each
    mine = torch.where((ids >= 0) & (ids // (E // nodes) == a), ids, -1)  # [R1, k]: my node's experts, else -1
    # ---- stage 2: inside my node, one row per (received token, expert here); counts first
    order2, counts2 = _expert_major(mine, E)  # [S2], [E] (zero outside my node)
    m = E // W
    inside = [m if j // G == a else 0 for j in range(W)]  # m counts to each rank of my node
    with meter.phase("count_exchange"):
        got2 = meter.a2a(counts2.view(W, m)[a * G : (a + 1) * G].reshape(-1), inside, inside,
                         name="all_to_all (counts, intra-node)")  # [G*m]
    recv_counts = counts2.new_zeros(W, m)
    recv_counts[a * G : (a + 1) * G] = got2.view(G, m)  # [W, m] rows each source sends my experts
    a2a = _named(meter, "dispatch (intra-node)", "combine (intra-node)")
    back2 = ragged_exchange(x1, order2, counts2, recv_counts, k, local_experts, meter.group, meter.phase, a2a)
    R1 = x1.shape[0]
    out = x1.new_zeros(R1 * k, d).index_copy(0, order2, back2)  # [R1*k, d] each assignment's output
    part = combine_weighted(g1, mine, out.view(R1, k, d))  # [R1, d]: one row per (token, node)
    # ---- stage 1 backwards: the per-node sums go home; the source adds its tokens' rows up
    with meter.phase("combine"):
        back1 = meter.a2a(part, send1, recv1, name="combine (once per node, inter-node)")  # [S1, d]
    return x.new_zeros(N, d).index_add(0, tok, back1)  # [N, d]

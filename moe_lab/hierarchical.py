"""Hierarchical AlltoAll: gather by destination node inside the node, then one exchange across nodes.

As in Tutel (arXiv 2206.03382) and DeepSpeed-MoE (arXiv 2201.05596). W ranks, n nodes, G = W / n
ranks per node; rank (a, l) is node a, local index l (rank a·G + l).

  stage 1 (intra-node)  rank (a, l) sends its local peer (a, l') every row bound for local index l'
                        on *any* node: the rows for (0, l'), (1, l'), ... (n-1, l').
  stage 2 (inter-node)  rank (a, l') now holds what its whole node sends to ranks (b, l'); it sends
                        each (b, l'), b ≠ a, one message with those rows.
  after stage 2 rank (b, l') holds node 0's rows, then node 1's, ..., each node's rows ordered by
  source local index: that *is* source-major order, so the received rows are exactly the flat
  AlltoAll's and the experts' outputs are bit-identical.
Each rank sends n − 1 inter-node messages instead of up to G·(n − 1); the inter-node bytes are
the same (every row still crosses once), in fewer, larger messages — the latency term shrinks.
Combine runs the same two stages backwards (inter-node first, then inside the node).

NOTE (layout), W = 4, n = 2, G = 2, rank 0 = (0, 0) sends rows to ranks 0..3 sized [2, 1, 3, 4]:
  its buffer is destination-major  [→0 →0 | →1 | →2 →2 →2 | →3 ×4]
  stage 1 regroups it by local index l' (then node b): for l'=0 [→0 ×2, →2 ×3], for l'=1 [→1, →3 ×4],
  sending the first group to itself and the second to rank 1 (its local peer l'=1).
"""
from __future__ import annotations

import torch

from .topology import ranks_per_node


def regroup(sizes: torch.Tensor) -> torch.Tensor:
    """Row permutation that turns chunks laid out [A][B] (A-major) into B-major order.

    sizes [A, B] rows per chunk. Worked example: sizes = [[2, 1], [3, 4]] (chunks a0b0 a0b1 a1b0 a1b1
    at rows 0-1, 2, 3-5, 6-9) -> B-major a0b0 a1b0 a0b1 a1b1 = rows [0, 1, 3, 4, 5, 2, 6, 7, 8, 9].
    """
    A, B = sizes.shape
    starts = (torch.cumsum(sizes.reshape(-1), 0) - sizes.reshape(-1)).view(A, B)
    pieces = [torch.arange(int(starts[a, b]), int(starts[a, b] + sizes[a, b])) for b in range(B) for a in range(A)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv


class HierarchicalAlltoAll:
    """The two-stage AlltoAll on top of a LinkMeter (which counts and emulates each stage).

    Use it where dispatch.py takes `a2a`: the first call after `exchange_counts` (or the first
    padded call) is the dispatch, the next one the combine, which runs the dispatch's plan backwards.
    """

    def __init__(self, meter, nodes: int):
        self.meter, self.W, self.n = meter, meter.W, nodes
        self.G = ranks_per_node(self.W, nodes)
        self.a, self.l = divmod(meter.rank, self.G)
        self._node_rows = None  # [G, n] rows node-peer (a, l) sends to (b, self.l): from exchange_counts
        self._plan = None  # the dispatch's plan, waiting for its combine

    def _plan_for(self, send: torch.Tensor, node_rows: torch.Tensor, recv_from: torch.Tensor) -> dict:
        """Splits and permutations of both stages.

        send [W] rows I send each rank (destination-major buffer); node_rows [G, n] rows my node's
        rank (a, l) sends rank (b, my l); recv_from [W] rows each rank sends me.
        """
        G, n, a, W = self.G, self.n, self.a, self.W
        mine = [a * G + j for j in range(G)]  # my node's ranks
        peers = [b * G + self.l for b in range(n)]  # same local index on every node
        s1, r1, s2, r2 = [0] * W, [0] * W, [0] * W, [0] * W
        by_local = send.view(n, G).sum(0)  # [G] rows I send to local index l' (any node)
        for j, r in enumerate(mine):
            s1[r] = int(by_local[j])
            r1[r] = int(node_rows[j].sum())
        for b, r in enumerate(peers):
            s2[r] = int(node_rows[:, b].sum())
            r2[r] = int(recv_from[b * G : (b + 1) * G].sum())
        return dict(perm1=regroup(send.view(n, G)), perm2=regroup(node_rows), s1=s1, r1=r1, s2=s2, r2=r2)

    def _forward(self, x, p, name):
        y1 = self.meter.a2a(x[p["perm1"]], p["r1"], p["s1"], name=f"{name} (stage 1, intra-node)")
        return self.meter.a2a(y1[p["perm2"]], p["r2"], p["s2"], name=f"{name} (stage 2, inter-node)")

    def _backward(self, y, p, name):
        z1 = self.meter.a2a(y, p["s2"], p["r2"], name=f"{name} (stage 2, inter-node)")
        z = self.meter.a2a(z1[_inverse(p["perm2"])], p["s1"], p["r1"], name=f"{name} (stage 1, intra-node)")
        return z[_inverse(p["perm1"])]

    def exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """counts [E] per expert -> [W, m] rows each source sends my experts, in the two stages.

        Stage 1 of the counts also tells me, for my node's ranks, how many rows each sends to
        the ranks with my local index (node_rows): what stage 1 of the payload needs.
        """
        W, n, G = self.W, self.n, self.G
        m = counts.numel() // W
        uniform = torch.full((W,), m, dtype=torch.long)
        p = self._plan_for(uniform, torch.full((G, n), m, dtype=torch.long), uniform)
        y1 = self.meter.a2a(counts[p["perm1"]], p["r1"], p["s1"], name="all_to_all (counts, stage 1)")
        self._node_rows = y1.view(G, n, m).sum(-1)  # [G, n]
        recv = self.meter.a2a(y1[p["perm2"]], p["r2"], p["s2"], name="all_to_all (counts, stage 2)")
        return recv.view(W, m)

    def a2a(self, x, out_splits=None, in_splits=None, group=None):
        """Drop-in for dispatch's flat AlltoAll: dispatch on the first call, combine on the second."""
        if self._plan is None:
            W = self.W
            if in_splits is None:  # padded: equal splits, every chunk x.shape[0] / W rows
                R = x.shape[0] // W
                send = recv_from = torch.full((W,), R, dtype=torch.long)
                node_rows = torch.full((self.G, self.n), R, dtype=torch.long)
            else:
                send, recv_from = torch.tensor(in_splits), torch.tensor(out_splits)
                node_rows = self._node_rows
            self._plan = self._plan_for(send, node_rows, recv_from)
            return self._forward(x, self._plan, "dispatch")
        plan, self._plan = self._plan, None
        return self._backward(x, plan, "combine")

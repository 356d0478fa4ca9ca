"""StepTrace: what one expert-parallel step did, as plain numpy arrays.

Each rank records its own `RankTrace` (what it chose, sent and timed); the parent merges them
into one `StepTrace`. That is enough to draw every figure of the chapter, the AlltoAll buffer
layouts and any token's path, without re-running anything: figures are pure functions of it.

NOTE (layout) — buffers in both modes, explained once:
  send buffer of rank s  = expert-major: all rows for expert 0, then expert 1, ... each expert's
                           rows in slot order. Experts of rank r are r*m .. r*m+m-1 (m = E / P),
                           so expert-major is also destination-rank-major: one contiguous chunk
                           per destination, which is what all_to_all_single needs.
  recv buffer of rank r  = source-rank-major: the chunk from rank 0, then rank 1, ... each chunk
                           expert-major over r's m local experts.
  ragged: only kept assignments travel. padded: every expert gets exactly C rows per source
  rank, unused rows are padding.
Worked example (P = 2, m = 1, ragged): rank 0 keeps 2 assignments for e0 and 3 for e1, rank 1
keeps 1 for e0 and 4 for e1 -> send_counts = [[2, 3], [1, 4]]; rank 1 receives [3 from r0 | 4
from r1] = 7 rows; combine sends the same rows back (the transpose).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .topology import merge_links

PHASES = ("router", "count_exchange", "dispatch", "experts", "combine")


def buffer_rows(kept_se: np.ndarray, buffer_slots: int | None):
    """Rows in each rank's send and receive buffer, padding included: ([P], [P]).

    kept_se [P src, E] kept assignments per (source rank, expert). Ragged: exactly the kept rows
    travel. Padded: every expert gets `buffer_slots` rows from every source, used or not, so a
    rank sends E·S rows and receives P·m·S (m = E / P local experts).
    """
    P, E = kept_se.shape
    if buffer_slots is None:
        return kept_se.sum(1), kept_se.reshape(P, P, E // P).sum((0, 2))
    return np.full(P, E * buffer_slots), np.full(P, E * buffer_slots)  # P·m·S = E·S


@dataclass
class RankTrace:
    """One rank's part of a step. Tables are [N, k]; `used`/`slot` are -1 where dropped."""

    rank: int
    world_size: int
    num_experts: int
    k: int
    d_model: int
    capacity: int | None  # slots per expert per source rank (None = dropless ragged)
    dispatch: str
    chosen: np.ndarray  # [N, k] the experts each token chose, best first
    used: np.ndarray  # [N, k] the expert actually used (overflow may differ), -1 dropped
    slot: np.ndarray  # [N, k] slot in that expert's buffer, -1 dropped
    gates: np.ndarray  # [N, k]
    buffer_slots: int | None  # rows per expert per source in the padded buffer (None: ragged)
    elem_bytes: int
    times: dict  # phase -> seconds on this rank, plus "total"
    aux_loss: float
    z_loss: float
    # routing variants (chapter 6): with router="expert_choice" the tables are [N, E], column e = expert e
    router: str = "top_k"
    num_shared: int = 0
    granularity: int = 1
    net: dict = field(default_factory=dict)  # links.LinkMeter.summary(): link bytes/messages, timeline events

    experts = property(lambda self: self.chosen, doc="deprecated alias of `chosen`")
    expert = property(lambda self: self.used, doc="deprecated alias of `used`")


@dataclass
class StepTrace:
    """A whole step, merged over ranks. Arrays indexed by rank [P] or expert [E]."""

    world_size: int
    num_experts: int
    k: int
    tokens_per_rank: int
    d_model: int
    dispatch: str
    capacity: int | None  # slots per expert per source rank, None when dropless
    buffer_slots: int | None  # padded rows per expert per source (= capacity, or N if dropless)
    send_counts: np.ndarray  # [P, P] kept token copies rank i sends rank j at dispatch
    kept: np.ndarray  # [E] kept assignments per expert (the expert that served them)
    dropped: np.ndarray  # [E] dropped assignments per expert (the expert they chose)
    chosen_count: np.ndarray  # [E] assignments that chose each expert, before capacity (f_i · N·k·P)
    recv_tokens: np.ndarray  # [P] real token copies each rank's experts received
    send_rows: np.ndarray  # [P] rows in each rank's send buffer (padding included)
    recv_rows: np.ndarray  # [P] rows in each rank's receive buffer (padding included)
    bytes_sent: np.ndarray  # [P] dispatch payload bytes (combine sends the same back)
    rank_time_s: np.ndarray  # [P] forward (+backward) wall time on each rank
    phase_time_s: dict  # phase -> [P] seconds
    aux_loss: float  # mean over ranks
    z_loss: float
    chosen: np.ndarray  # [P, N, k] the experts each token chose, best first
    used: np.ndarray  # [P, N, k] the expert actually used, -1 dropped
    slot: np.ndarray  # [P, N, k]
    gates: np.ndarray  # [P, N, k]
    extra: dict = field(default_factory=dict)  # e.g. the config, latency measured by the parent
    # routing variants (chapter 6)
    router: str = "top_k"  # "top_k" (tables [P, N, k]) or "expert_choice" (tables [P, N, E], -1 = not chosen)
    num_shared: int = 0  # shared experts applied to every token on its own rank (no bytes moved)
    granularity: int = 1  # pieces per original expert (fine-grained experts)
    experts_per_token: np.ndarray | None = None  # [P, N] routed experts that served each token (0 = none)
    # chapter 7 (moe_lab.topology): what each rank sent over the forward's EP AlltoAlls, count exchange
    # included, per link type {"intra": [P], "inter": [P]}; and the ranks' timestamped phases
    nodes: int = 1
    link_bytes: dict = field(default_factory=dict)
    link_messages: dict = field(default_factory=dict)
    link_per_collective: dict = field(default_factory=dict)  # collective -> {"inter_messages": [P], ...}
    timeline: list = field(default_factory=list)  # dicts: rank, phase, chunk, kind, start, end (s)

    experts = property(lambda self: self.chosen, doc="deprecated alias of `chosen`")
    expert = property(lambda self: self.used, doc="deprecated alias of `used`")

    @classmethod
    def merge(cls, parts: list[RankTrace]) -> "StepTrace":
        parts = sorted(parts, key=lambda p: p.rank)
        p0 = parts[0]
        P, E = p0.world_size, p0.num_experts
        m = E // P
        used = np.stack([p.used for p in parts])  # [P, N, k]
        chosen = np.stack([p.chosen for p in parts])
        kept_se = np.stack([np.bincount(e[e >= 0], minlength=E) for e in used.reshape(P, -1)])  # [P, E]
        send_counts = kept_se.reshape(P, P, m).sum(-1)  # [P src, P dst]
        flat_chosen = chosen.reshape(-1)  # -1 marks "not chosen" in expert-choice tables
        chosen_count = np.bincount(flat_chosen[flat_chosen >= 0], minlength=E)
        kept_by_choice = np.bincount(flat_chosen[(used.reshape(-1) >= 0) & (flat_chosen >= 0)], minlength=E)
        S = p0.buffer_slots
        send_rows, recv_rows = buffer_rows(kept_se, S)
        row_bytes = p0.d_model * p0.elem_bytes
        link_bytes, link_messages, per_collective, timeline = merge_links([p.net for p in parts])
        return cls(
            world_size=P, num_experts=E, k=p0.k, tokens_per_rank=p0.used.shape[0], d_model=p0.d_model,
            dispatch=p0.dispatch, capacity=p0.capacity, buffer_slots=S,
            send_counts=send_counts, kept=kept_se.sum(0), dropped=chosen_count - kept_by_choice,
            chosen_count=chosen_count,
            recv_tokens=send_counts.sum(0), send_rows=send_rows, recv_rows=recv_rows,
            bytes_sent=send_rows * row_bytes,
            rank_time_s=np.array([p.times.get("total", 0.0) for p in parts]),
            phase_time_s={ph: np.array([p.times.get(ph, 0.0) for p in parts])
                          for ph in PHASES + (("shared",) if p0.num_shared else ())},
            aux_loss=float(np.mean([p.aux_loss for p in parts])),
            z_loss=float(np.mean([p.z_loss for p in parts])),
            chosen=chosen, used=used, slot=np.stack([p.slot for p in parts]),
            gates=np.stack([p.gates for p in parts]),
            router=p0.router, num_shared=p0.num_shared, granularity=p0.granularity,
            experts_per_token=(used >= 0).sum(-1),
            nodes=p0.net.get("nodes", 1), extra=dict(inter_node=p0.net.get("inter_node")),
            link_bytes={t: np.array(v) for t, v in link_bytes.items()},
            link_messages={t: np.array(v) for t, v in link_messages.items()},
            link_per_collective={c: {k: np.array(v) for k, v in d.items()} for c, d in per_collective.items()},
            timeline=timeline,
        )

    # ---- derived views -------------------------------------------------------------------
    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.world_size

    def expert_rank(self, e: int) -> int:
        """The rank (GPU) that holds expert e."""
        return int(e) // self.experts_per_rank

    @property
    def assignments(self) -> int:
        return self.world_size * self.tokens_per_rank * self.k

    def dropped_at(self, rank: int) -> np.ndarray:
        """[N, k] True where an assignment of `rank` was chosen but dropped (an expert-choice table's
        -1 means "not chosen", not dropped)."""
        return (self.used[rank] < 0) & (self.chosen[rank] >= 0)

    @property
    def tokens_without_expert(self) -> int:
        """Tokens no routed expert served (all k dropped; or, with expert choice, picked by no expert)."""
        return int((~(self.used >= 0).any(-1)).sum())

    @property
    def dropped_share(self) -> float:
        return float(self.dropped.sum()) / max(self.assignments, 1)

    @property
    def load_imbalance(self) -> float:
        """max / mean tokens received per rank (1 = perfectly balanced)."""
        mean = self.recv_tokens.mean()
        return float(self.recv_tokens.max() / mean) if mean > 0 else 1.0

    def send_buffer(self, rank: int) -> list:
        """Rows of `rank`'s send buffer in order: (dst_rank, expert, slot, token, j), or
        (dst_rank, expert, slot, None, None) for a padding row."""
        rows = []
        for e in range(self.num_experts):
            held, dst = self._holders(rank, e), self.expert_rank(e)
            rows += [(dst, e, s, t, j) for s, (t, j) in enumerate(held)]
            if self.buffer_slots is not None:
                rows += [(dst, e, s, None, None) for s in range(len(held), self.buffer_slots)]
        return rows

    def recv_buffer(self, rank: int) -> list:
        """Rows of `rank`'s receive buffer: (src_rank, expert, slot, token, j); token None = padding."""
        m = self.experts_per_rank
        rows = []
        for src in range(self.world_size):
            for e in range(rank * m, (rank + 1) * m):
                held = self._holders(src, e)
                rows += [(src, e, s, t, j) for s, (t, j) in enumerate(held)]
                if self.buffer_slots is not None:
                    rows += [(src, e, s, None, None) for s in range(len(held), self.buffer_slots)]
        return rows

    def _holders(self, rank: int, e: int) -> list:
        """(token, j) of the assignments of `rank` kept at expert e, in slot order."""
        t, j = np.nonzero(self.used[rank] == e)
        order = np.argsort(self.slot[rank][t, j], kind="stable")
        return [(int(t[i]), int(j[i])) for i in order]

    def token_path(self, rank: int, token: int) -> list[dict]:
        """Deprecated name of `hops` (viz.token_path is the figure)."""
        return self.hops(rank, token)

    def hops(self, rank: int, token: int) -> list[dict]:
        """The chapter's Question for one token: where each of its k copies goes and comes back.

        One dict per choice j: chosen expert, expert used, that expert's rank, slot, row in the
        send buffer of `rank` and in the receive buffer of the expert's rank, and its gate.
        """
        if not 0 <= rank < self.world_size or not 0 <= token < self.tokens_per_rank:
            raise ValueError(f"no token {token} on rank {rank}: ranks 0..{self.world_size - 1}, "
                             f"tokens 0..{self.tokens_per_rank - 1}")
        send = {(r[3], r[4]): i for i, r in enumerate(self.send_buffer(rank)) if r[3] is not None}
        path = []
        for j in range(self.used.shape[2]):  # k choices; expert choice: one column per expert
            if self.chosen[rank, token, j] < 0:  # expert choice: expert j did not pick this token
                continue
            e = int(self.used[rank, token, j])
            hop = dict(j=j, chosen=int(self.chosen[rank, token, j]), expert=e,
                       gate=float(self.gates[rank, token, j]), dropped=e < 0)
            if e >= 0:
                dst = self.expert_rank(e)
                recv = [i for i, r in enumerate(self.recv_buffer(dst)) if r[0] == rank and r[3] == token and r[4] == j]
                hop.update(expert_rank=dst, slot=int(self.slot[rank, token, j]),
                           send_row=send[(token, j)], recv_row=recv[0])
            path.append(hop)
        return path

"""Nodes and links: which rank sits on which node, which messages cross nodes, and the emulated slow link.

W ranks on n nodes, G = W / n ranks per node: rank r is on node r // G with local index r % G
(ranks 0..G-1 are node 0, ...). A *message* is one non-empty chunk rank i sends rank j ≠ i in an
AlltoAll; it is *intra* when i and j share a node, else *inter*. On a real cluster intra-node
links (NVLink) are ~10x faster than the inter-node network (one NIC per GPU); on this machine all
ranks share one memory, so the slow link is EMULATED: `LinkModel` says how long an inter-node
message would take, and the rank waits that long (moe_lab.links). Nothing here is measured.

Pure arithmetic: no torch.distributed, so the parent, the ranks and the figures can all use it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

LINK_TYPES = ("intra", "inter")


@dataclass(frozen=True)
class LinkModel:
    """An EMULATED link: a message of b bytes takes latency_us · 1e-6 + b / (bandwidth_GBps · 1e9) s.

    One NIC per rank: a rank's messages go out one after another, so their times add up.
    """

    bandwidth_GBps: float
    latency_us: float = 0.0

    def __post_init__(self):
        for name in ("bandwidth_GBps", "latency_us"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}={v!r}: must be a finite number")
        if self.bandwidth_GBps <= 0:
            raise ValueError(f"bandwidth_GBps={self.bandwidth_GBps!r}: must be > 0 (GB/s of the emulated link)")
        if self.latency_us < 0:
            raise ValueError(f"latency_us={self.latency_us!r}: must be >= 0 (microseconds per emulated message)")

    def seconds(self, message_bytes) -> float:
        """Emulated time to send these messages one after another (an iterable of byte sizes)."""
        sizes = list(message_bytes)
        return len(sizes) * self.latency_us * 1e-6 + sum(sizes) / (self.bandwidth_GBps * 1e9)

    def __str__(self):
        return f"emulated link {self.bandwidth_GBps:g} GB/s, {self.latency_us:g} µs/message"


def ranks_per_node(world_size: int, nodes: int) -> int:
    if nodes < 1 or world_size % nodes:
        raise ValueError(f"nodes={nodes} does not divide world_size={world_size}")
    return world_size // nodes


def node_of(rank: int, world_size: int, nodes: int) -> int:
    """The node of a rank: r // G."""
    return rank // ranks_per_node(world_size, nodes)


def local_index(rank: int, world_size: int, nodes: int) -> int:
    """The rank's index inside its node: r % G."""
    return rank % ranks_per_node(world_size, nodes)


def expert_node(expert: int, num_experts: int, nodes: int) -> int:
    """The node holding expert e: e // (E / n) (experts are laid out rank by rank, ranks node by node)."""
    return expert // (num_experts // nodes)


def link_of(src: int, dst: int, world_size: int, nodes: int) -> str | None:
    """'intra', 'inter', or None for a rank talking to itself (not a message)."""
    if src == dst:
        return None
    same = node_of(src, world_size, nodes) == node_of(dst, world_size, nodes)
    return "intra" if same else "inter"


def classify(src: int, chunk_bytes, world_size: int, nodes: int) -> dict:
    """What rank `src` sends in one AlltoAll whose chunk to rank j has chunk_bytes[j] bytes.

    Returns {"intra": [sizes], "inter": [sizes]}: the byte size of each message per link type
    (empty chunks and the chunk to itself are not messages).
    Worked example (W = 4, n = 2, src = 0): chunk_bytes = [8, 0, 4, 4] -> chunk 0 is to itself,
    rank 1 gets nothing, ranks 2 and 3 are on node 1: {"intra": [], "inter": [4, 4]}.
    """
    out = {"intra": [], "inter": []}
    for kind, b in zip(_links_from(src, world_size, nodes), chunk_bytes):
        if kind is not None and b > 0:
            out[kind].append(int(b))
    return out


@functools.lru_cache(maxsize=256)
def _links_from(src: int, world_size: int, nodes: int) -> tuple:
    """link_of(src, dst) for every dst: a rank classifies every AlltoAll it sends, so it is worked out once."""
    return tuple(link_of(src, dst, world_size, nodes) for dst in range(world_size))


def merge_links(nets: list[dict]):
    """The ranks' link records (rank order) -> (link_bytes, link_messages, per_collective, timeline).

    link_bytes / link_messages: {"intra": [W], "inter": [W]} what each rank sent over the step's
    EP AlltoAlls; per_collective: {collective: {"intra_messages": [W], "intra_bytes": [W], "inter_...": [W]}};
    timeline: one dict per event (rank, phase, chunk, kind, start, end), times in seconds from the
    earliest event of any rank.
    """
    W = len(nets)
    link_bytes = {t: [0] * W for t in LINK_TYPES}
    link_messages = {t: [0] * W for t in LINK_TYPES}
    events, per_collective = [], {}
    for r, net in enumerate(nets):
        for name, d in net.get("per_collective", {}).items():
            c = per_collective.setdefault(name, {f"{t}_{w}": [0] * W for t in LINK_TYPES for w in ("messages", "bytes")})
            for t in LINK_TYPES:
                c[f"{t}_messages"][r], c[f"{t}_bytes"][r] = d[t]
        for t in LINK_TYPES:
            link_bytes[t][r] = net.get("link_bytes", {}).get(t, 0)
            link_messages[t][r] = net.get("link_messages", {}).get(t, 0)
        events += [(r, *e) for e in net.get("events", [])]
    t0 = min((e[4] for e in events), default=0.0)
    timeline = [dict(rank=r, phase=p, chunk=c, kind=k, start=s - t0, end=e - t0) for r, p, c, k, s, e in events]
    return link_bytes, link_messages, per_collective, timeline

"""MoEConfig: the single source of settings for an MoE layer, and *all* input validation.

Every setting is checked here, in the parent process, so that a bad value raises a clear
`ValueError` before any rank starts (a rank that fails on bad input would only surface as a
distributed error far from the cause).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .topology import LinkModel

POLICIES = ("drop", "overflow")
PRIORITIES = ("position", "score")
DISPATCHES = ("ragged", "padded")
ROUTERS = ("top_k", "expert_choice")
ALLTOALLS = ("flat", "hierarchical", "node_dedup")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class MoEConfig:
    """Settings of one MoE layer, named as in the chapter.

    num_experts (E)   experts in the layer; E = P (one expert per GPU) or a multiple of the ranks.
    k                 experts per token (top-k).
    capacity_factor   C = ceil(capacity_factor * k * N / E) slots per expert per source rank;
                      None = dropless (ragged buffers sized by the real counts, nothing dropped).
    policy            "drop": an assignment over capacity is dropped; "overflow": it moves to the
                      token's next-preferred expert that still has room.
    priority          "position": assignments fill buffers in token order (first choices first);
                      "score": within each round, by router probability, highest first.
    aux_alpha (α)     weight of the load-balancing loss  α · E · Σ f_i p_i.
    z_alpha           weight of the router z-loss  mean(logsumexp(logits)^2); 0 disables it.
    dispatch          "ragged": uneven AlltoAll splits, only real tokens travel;
                      "padded": fixed [E, C, d] buffers, equal splits (GShard / Switch).
    normalize_gates   renormalise the k chosen gate weights to sum to 1 (only matters for k > 1).

    Routing variants (chapter 6; moe_lab/expert_choice.py, moe_lab/shared_experts.py):
    router            "top_k": each token picks its k experts (token choice); "expert_choice": each
                      expert picks its top-C tokens of each source rank (Zhou et al., arXiv 2202.09368).
    num_shared (S)    shared experts every token also goes through, replicated on every rank
                      (DeepSeekMoE, arXiv 2401.06066).
    granularity (m)   how many pieces each expert was cut into; set by `fine_grained(m)`, which also
                      multiplies E, k and S by m and divides d_hidden by m.
    -- the network (chapter 7; moe_lab.topology) --
    alltoall          "flat": one AlltoAll over all ranks; "hierarchical": inside the node, then
                      across nodes between same-local-rank peers (moe_lab.hierarchical);
                      "node_dedup": each token crosses once per node that holds one of its experts,
                      is forwarded to them inside that node, and one summed row per (token, node)
                      comes back (DeepSeek-V3; moe_lab.node_dedup).
    max_nodes (M)     node-limited routing: each token's k experts lie on at most M nodes (None = no limit).
    chunks (c)        split the rank's tokens into c chunks and pipeline dispatch / experts / combine.
    inter_node        an *emulated* slow inter-node link, topology.LinkModel (None = links as they are).
    """

    num_experts: int = 8
    k: int = 2
    capacity_factor: float | None = 1.25
    policy: str = "drop"
    priority: str = "position"
    aux_alpha: float = 0.01
    z_alpha: float = 0.0
    d_model: int = 64
    d_hidden: int = 256
    dispatch: str = "ragged"
    normalize_gates: bool = True
    seed: int = 0
    # routing variants (chapter 6)
    router: str = "top_k"
    num_shared: int = 0
    granularity: int = 1
    alltoall: str = "flat"
    max_nodes: int | None = None
    chunks: int = 1
    inter_node: LinkModel | None = None

    def __post_init__(self):
        E = self.num_experts
        if not _is_int(E) or E < 1:
            raise ValueError(f"num_experts={E!r}: must be a whole number >= 1")
        if not _is_int(self.k) or not 1 <= self.k <= E:
            raise ValueError(f"k={self.k!r} but there are {E} experts; choose 1 <= k <= {E}")
        cf = self.capacity_factor
        if cf is not None:
            if isinstance(cf, bool) or not isinstance(cf, (int, float)):
                raise ValueError(f"capacity_factor={cf!r}: must be a number > 0, or None for dropless")
            if not math.isfinite(cf) or cf <= 0:
                raise ValueError(f"capacity_factor={cf!r}: must be a finite number > 0, or None for dropless")
        if self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r}: choose one of {POLICIES}")
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority={self.priority!r}: choose one of {PRIORITIES}")
        if self.dispatch not in DISPATCHES:
            raise ValueError(f"dispatch={self.dispatch!r}: choose one of {DISPATCHES}")
        for name in ("aux_alpha", "z_alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v!r}: must be a finite number >= 0")
        for name in ("d_model", "d_hidden"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name}={v!r}: must be a whole number >= 1")
        if not isinstance(self.normalize_gates, bool):
            raise ValueError(f"normalize_gates={self.normalize_gates!r}: must be True or False")
        if not _is_int(self.seed):
            raise ValueError(f"seed={self.seed!r}: must be a whole number")
        self._check_variants()
        self._check_network()

    def _check_variants(self) -> None:
        """Routing variants (chapter 6): router, shared experts, granularity."""
        if self.router not in ROUTERS:
            raise ValueError(f"router={self.router!r}: choose one of {ROUTERS}")
        if self.router == "expert_choice":
            if self.capacity_factor is None:
                raise ValueError("router='expert_choice' needs a capacity_factor: each expert picks its top-C tokens, "
                                 "C = ceil(capacity_factor * k * N / E); capacity_factor=None (dropless) has no C")
            if self.policy != "drop":
                raise ValueError(f"router='expert_choice' with policy={self.policy!r}: experts pick their tokens, so "
                                 "nothing overflows to another expert; use policy='drop'")
        if not _is_int(self.num_shared) or self.num_shared < 0:
            raise ValueError(f"num_shared={self.num_shared!r}: must be a whole number >= 0 (0 = no shared experts)")
        m = self.granularity
        if not _is_int(m) or m < 1:
            raise ValueError(f"granularity={m!r}: must be a whole number >= 1")
        if self.num_experts % m:
            raise ValueError(f"granularity={m} but num_experts={self.num_experts} is not a multiple of it; "
                             "build fine-grained configs with cfg.fine_grained(m)")

    def fine_grained(self, m: int) -> "MoEConfig":
        """DeepSeekMoE's fine-grained experts (arXiv 2401.06066): each expert cut into m pieces.

        E·m experts of hidden d_hidden/m, top-(k·m) of them per token, and S·m shared pieces:
        the same parameters and FLOPs per token, C(E·m, k·m) expert combinations instead of C(E, k).
        Capacity C = ceil(cf · k·m · N / (E·m)) is unchanged.
        """
        if not _is_int(m) or m < 1:
            raise ValueError(f"granularity m={m!r}: must be a whole number >= 1")
        if self.d_hidden % m:
            raise ValueError(f"granularity m={m} does not divide d_hidden={self.d_hidden}; choose m among the "
                             f"divisors of {self.d_hidden}")
        if self.k * m > self.num_experts * m:
            raise ValueError(f"granularity m={m}: k*m={self.k * m} choices but only {self.num_experts * m} experts")
        return replace(self, num_experts=self.num_experts * m, k=self.k * m, d_hidden=self.d_hidden // m,
                       num_shared=self.num_shared * m, granularity=self.granularity * m)


    def _check_network(self) -> None:
        """The chapter-7 settings that need no world size (see check_nodes for the rest)."""
        if self.alltoall not in ALLTOALLS:
            raise ValueError(f"alltoall={self.alltoall!r}: choose one of {ALLTOALLS}")
        M = self.max_nodes
        if M is not None:
            if not _is_int(M) or M < 1:
                raise ValueError(f"max_nodes={M!r}: must be a whole number >= 1, or None for no limit")
            if self.router != "top_k":
                raise ValueError(f"max_nodes={M} limits the nodes a token chooses; router={self.router!r} has the "
                                 "experts choose, so use router='top_k' or max_nodes=None")
            if self.k % M:
                raise ValueError(f"k={self.k} is not divisible by max_nodes={M}: each of the M nodes "
                                 f"contributes its top-(k/M) experts to the node score; choose M dividing k")
        if not _is_int(self.chunks) or self.chunks < 1:
            raise ValueError(f"chunks={self.chunks!r}: must be a whole number >= 1 (1 = no pipelining)")
        if self.chunks > 1 and self.dispatch != "ragged":
            raise ValueError(f"chunks={self.chunks} pipelines the ragged dispatch; use dispatch='ragged' or chunks=1")
        if self.chunks > 1 and self.alltoall != "flat":
            raise ValueError(f"chunks={self.chunks} pipelines the flat AlltoAll; use alltoall='flat' or chunks=1")
        if self.alltoall == "node_dedup" and self.dispatch != "ragged":
            raise ValueError(f"alltoall='node_dedup' with dispatch={self.dispatch!r}: send-once moves one row per "
                             "(token, node) and sums the node's experts there, while padded buffers hold one row per "
                             "(token, expert) capacity slot; use dispatch='ragged' (capacity_factor still drops "
                             "the same assignments)")
        if self.inter_node is not None and not isinstance(self.inter_node, LinkModel):
            raise ValueError(f"inter_node={self.inter_node!r}: must be a LinkModel(bandwidth_GBps, latency_us) or None")

    def check_nodes(self, world_size: int, nodes: int) -> None:
        """Settings that depend on the cluster's shape: nodes divide the ranks, M <= nodes."""
        check_nodes(world_size, nodes)
        if self.max_nodes is not None and self.max_nodes > nodes:
            raise ValueError(f"max_nodes={self.max_nodes} but the cluster has only nodes={nodes}; "
                             f"choose 1 <= max_nodes <= {nodes}")
        if self.num_experts % nodes:
            raise ValueError(f"num_experts={self.num_experts} cannot be split evenly over nodes={nodes}")
        if self.max_nodes is not None and self.k // self.max_nodes > self.num_experts // nodes:
            raise ValueError(f"k/max_nodes={self.k // self.max_nodes} experts per node but a node holds only "
                             f"{self.num_experts // nodes}; raise max_nodes or lower k")

    def check_chunks(self, tokens_per_rank: int) -> None:
        if self.chunks > tokens_per_rank:
            raise ValueError(f"chunks={self.chunks} but only tokens_per_rank={tokens_per_rank}: "
                             f"every chunk needs a token; choose chunks <= {tokens_per_rank}")

    def check_world(self, world_size: int) -> None:
        """Experts are split evenly over ranks: E must be a multiple of the world size."""
        check_world_size(world_size)
        if self.num_experts % world_size:
            raise ValueError(
                f"num_experts={self.num_experts} cannot be split evenly over world_size={world_size}; "
                f"use a multiple of {world_size} experts (one or more experts per rank)"
            )

    def experts_per_rank(self, world_size: int) -> int:
        self.check_world(world_size)
        return self.num_experts // world_size

    def replace(self, **changes) -> "MoEConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def check_world_size(world_size) -> None:
    if not _is_int(world_size) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: must be a whole number >= 1")


def check_nodes(world_size, nodes) -> None:
    """Ranks are split evenly over nodes: rank r is on node r // (W / nodes)."""
    check_world_size(world_size)
    if not _is_int(nodes) or nodes < 1 or world_size % nodes:
        raise ValueError(f"nodes={nodes!r} does not divide world_size={world_size}: every node holds "
                         f"the same number of ranks; choose a divisor of {world_size}")


def check_tokens_per_rank(n) -> None:
    if not _is_int(n) or n < 1:
        raise ValueError(f"tokens_per_rank={n!r}: must be a whole number >= 1")


def check_skew(skew) -> None:
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew={skew!r}: must be a number in [0, 1] (0 = balanced, 1 = all tokens prefer expert 0)")

"""MoEConfig: the single source of settings for an MoE layer, and *all* input validation.

Every setting is checked here, in the parent process, so that a bad value raises a clear
`ValueError` before any rank starts (a rank that fails on bad input would only surface as a
distributed error far from the cause).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

POLICIES = ("drop", "overflow")
PRIORITIES = ("position", "score")
DISPATCHES = ("ragged", "padded")


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


def check_tokens_per_rank(n) -> None:
    if not _is_int(n) or n < 1:
        raise ValueError(f"tokens_per_rank={n!r}: must be a whole number >= 1")


def check_skew(skew) -> None:
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew={skew!r}: must be a number in [0, 1] (0 = balanced, 1 = all tokens prefer expert 0)")

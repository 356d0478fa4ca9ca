"""StepTraces built in one process, for figure and widget tests that need no worker ranks.

`make_trace` routes every rank's block of tokens with the same code the expert-parallel layer
uses (`reference.route_block`), so its routing tables, counts and buffers are the ones a real
step of that config would record. Only the per-phase times are made up (deterministic, and
proportional to the rows each phase moves, so the slowest rank is the one that received most).

`tiny_trace` is the trace module's worked example written out by hand, small enough that every
expected number in a test can be checked with pencil and paper.
"""
from __future__ import annotations

import numpy as np

from moe_lab.config import MoEConfig
from moe_lab.routing import route_block
from moe_lab.trace import RankTrace, StepTrace, buffer_rows
from moe_lab.workload import init_weights, make_tokens


def make_trace(cfg: MoEConfig, world_size: int, tokens_per_rank: int, skew: float = 0.0) -> StepTrace:
    """A StepTrace of one forward step of `cfg` on `world_size` ranks, computed in this process."""
    cfg.check_world(world_size)
    router_w, _, _ = init_weights(cfg)
    x = make_tokens(cfg, world_size, tokens_per_rank, skew, router_w=router_w)  # [P*N, d]
    blocks = [route_block(xb, router_w, cfg) for xb in x.chunk(world_size)]
    P, E, N = world_size, cfg.num_experts, tokens_per_rank
    m = E // P
    C = blocks[0]["capacity"]
    padded = cfg.dispatch == "padded"
    # padded buffers hold C rows per expert per source; dropless padded needs room for all N
    slots = (C if C is not None else N) if padded else None

    # rows moved per rank, to make the fake times follow the real work
    kept_se = np.stack([np.bincount(_np(b["used"])[_np(b["used"]) >= 0], minlength=E) for b in blocks])  # [P, E]
    send_rows, recv_rows = buffer_rows(kept_se, slots)
    recv_real = kept_se.reshape(P, P, m).sum(-1).sum(0)  # [P] experts compute only real rows

    parts = []
    for r, b in enumerate(blocks):
        times = _fake_times(N, int(send_rows[r]), int(recv_rows[r]), int(recv_real[r]), padded)
        parts.append(RankTrace(
            rank=r, world_size=P, num_experts=E, k=cfg.k, d_model=cfg.d_model, capacity=C,
            dispatch=cfg.dispatch, chosen=_np(b["chosen"]), used=_np(b["used"]), slot=_np(b["slot"]),
            gates=_np(b["gates"]).astype(np.float32), buffer_slots=slots, elem_bytes=4, times=times,
            aux_loss=float(b["aux_loss"]), z_loss=float(b["z_loss"]),
        ))
    trace = StepTrace.merge(parts)
    trace.extra.update(cfg=cfg, skew=skew, source="trace_factory")
    return trace


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _fake_times(n: int, send_rows: int, recv_rows: int, recv_real: int, padded: bool) -> dict:
    """Seconds per phase, linear in the rows each phase touches (1 µs per row of d = 64)."""
    us = 1e-6
    t = {
        "router": 2 * us * n,
        "count_exchange": 0.0 if padded else 40 * us,  # padded splits are known in advance
        "dispatch": 20 * us + us * (send_rows + recv_rows) / 2,
        "experts": 4 * us * (recv_rows if padded else recv_real),  # padding rows are computed too
        "combine": 20 * us + us * (send_rows + recv_rows) / 2,
    }
    t["total"] = sum(t.values()) + 30 * us  # bookkeeping outside the named phases
    return t


# ---- hand-written traces ---------------------------------------------------------------------

def tiny_trace(dispatch: str = "ragged") -> StepTrace:
    """P = 2 ranks, E = 2 experts (one per rank), k = 1, N = 5 tokens, capacity C = 3.

    rank 0 chooses [e0, e0, e1, e1, e1] -> keeps 2 for e0 and 3 for e1, drops nothing
    rank 1 chooses [e0, e1, e1, e1, e1] -> keeps 1 for e0 and 3 for e1, drops its token 4
    send_counts = [[2, 3], [1, 3]]; kept = [3, 6]; dropped = [0, 1]; recv_tokens = [3, 6].
    Padded (C = 3 rows per expert per source): every buffer has E*C = 6 rows, so rank 0 sends
    1 padding row (for e0) and rank 1 sends 2 (for e0); rank 0 receives 3 real rows of 6.
    Times: rank 1 is the straggler (total 9 ms against 5 ms).
    """
    choices = [np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 1])]
    expert = [np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, -1])]
    slot = [np.array([0, 1, 0, 1, 2]), np.array([0, 0, 1, 2, -1])]
    times = [
        dict(router=0.001, count_exchange=0.0005, dispatch=0.001, experts=0.0015, combine=0.001, total=0.005),
        dict(router=0.001, count_exchange=0.0005, dispatch=0.002, experts=0.0035, combine=0.002, total=0.009),
    ]
    parts = [
        RankTrace(rank=r, world_size=2, num_experts=2, k=1, d_model=4, capacity=3, dispatch=dispatch,
                  chosen=choices[r][:, None], used=expert[r][:, None], slot=slot[r][:, None],
                  gates=np.ones((5, 1), np.float32), buffer_slots=3 if dispatch == "padded" else None,
                  elem_bytes=4, times=times[r], aux_loss=0.01 + 0.002 * r, z_loss=0.0)
        for r in range(2)
    ]
    return StepTrace.merge(parts)


def two_choice_trace() -> StepTrace:
    """P = 2, E = 4 (two experts per rank), k = 2, N = 3, dropless ragged.

    rank 0: token 0 -> (e1, e3), token 1 -> (e0, e2), token 2 -> (e3, e1)
    rank 1: token 0 -> (e2, e0), token 1 -> (e2, e3), token 2 -> (e0, e1)
    So rank 0's token 0 goes to GPU 0 (e1, local) and GPU 1 (e3) and comes back.
    rank 0 keeps [1, 2, 1, 2] per expert, rank 1 keeps [2, 1, 2, 1]: send_counts = [[3, 3], [3, 3]],
    kept = [3, 3, 3, 3], nothing dropped.
    """
    choices = [np.array([[1, 3], [0, 2], [3, 1]]), np.array([[2, 0], [2, 3], [0, 1]])]
    slots = []
    for ch in choices:  # position priority: all first choices in token order, then second
        fill, s = {}, np.zeros_like(ch)
        for j in range(2):
            for t in range(3):
                e = int(ch[t, j])
                s[t, j] = fill.get(e, 0)
                fill[e] = s[t, j] + 1
        slots.append(s)
    gates = np.array([[0.7, 0.3], [0.6, 0.4], [0.55, 0.45]], np.float32)
    t = dict(router=0.001, count_exchange=0.001, dispatch=0.001, experts=0.001, combine=0.001, total=0.005)
    parts = [
        RankTrace(rank=r, world_size=2, num_experts=4, k=2, d_model=4, capacity=None, dispatch="ragged",
                  chosen=choices[r], used=choices[r].copy(), slot=slots[r], gates=gates,
                  buffer_slots=None, elem_bytes=4, times=t, aux_loss=0.01, z_loss=0.0)
        for r in range(2)
    ]
    return StepTrace.merge(parts)


def chapter_question_trace() -> StepTrace:
    """The chapter's Question: 8 experts on 8 GPUs, k = 2, dropless; token 0 of GPU 0 goes to E3
    (GPU 3) and E7 (GPU 7). Every GPU r has 2 tokens: token 0 -> (E(r+3), E(r+7)), token 1 ->
    (E(r), E(r+1)) (mod 8), so each GPU sends exactly one copy to GPUs r, r+1, r+3 and r+7."""
    P = 8
    parts = []
    for r in range(P):
        choices = np.array([[(r + 3) % P, (r + 7) % P], [r, (r + 1) % P]])  # [N=2, k=2]
        parts.append(RankTrace(
            rank=r, world_size=P, num_experts=P, k=2, d_model=4, capacity=None, dispatch="ragged",
            chosen=choices, used=choices.copy(), slot=np.zeros_like(choices),
            gates=np.array([[0.75, 0.25], [0.5, 0.5]], np.float32), buffer_slots=None, elem_bytes=4,
            times=dict(router=1e-3, count_exchange=1e-3, dispatch=1e-3, experts=1e-3, combine=1e-3, total=5e-3),
            aux_loss=0.01, z_loss=0.0))
    return StepTrace.merge(parts)

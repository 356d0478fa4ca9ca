"""LinkMeter: one rank's AlltoAlls for one step — counted per link type, delayed by the emulated link, timed.

Every AlltoAll of the layer goes through `start` (issue it, asynchronously) and `finish` (wait for
it). On the way the meter
  * counts the messages and bytes this rank sends per link type (moe_lab.topology.classify),
    which become StepTrace.link_messages / link_bytes;
  * emulates the slow inter-node link when the config has one: the rank's one NIC is busy
    latency + bytes / bandwidth per inter-node message, one message after another, and the rank
    waits that long on top of the real transfer, less whatever work it did while the message was in
    flight. This is an EMULATION (a sleep): the bytes really travel through shared memory;
  * records a timeline: (phase, chunk, kind, start, end) with kind "compute", "comm" (a
    collective in flight, issue to done), "wait" (the rank blocked on one) or "span" (a named
    communication phase of the layer, e.g. the whole dispatch). perf_counter is
    one system-wide clock on Linux, so ranks' timestamps line up.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from .comm import note
from .dispatch import all_to_all as plain_all_to_all
from .dispatch import all_to_all_async
from .topology import LINK_TYPES, LinkModel, classify


class LinkMeter:
    """Per-step, per-rank bookkeeping of the EP AlltoAlls (forward only)."""

    def __init__(self, group, nodes: int = 1, link=None, timer=None):
        self.group, self.nodes, self.link = group, nodes, link
        self.W, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.bytes = {t: 0 for t in LINK_TYPES}
        self.messages = {t: 0 for t in LINK_TYPES}
        self.per_collective: dict[str, dict] = {}  # name -> {"intra": [messages, bytes], "inter": [...]}
        self.events: list[tuple] = []  # (phase, chunk, kind, t_start, t_end)
        self._timer = timer
        self._nic_free = 0.0  # when this rank's emulated NIC has sent everything queued so far
        self.waited: dict[str, float] = {}  # seconds blocked per pipelined collective name (chunked overlap)

    @contextmanager
    def phase(self, name: str, chunk=None):
        """Time a phase: into the layer's per-phase totals (if any) and onto the timeline."""
        t = time.perf_counter()
        if self._timer is None:
            yield
        else:
            with self._timer(name):
                yield
        self.events.append((name, chunk, "compute" if name in ("router", "experts") else "span", t, time.perf_counter()))

    def start(self, x, out_splits=None, in_splits=None, name="all_to_all", chunk=None, blocking=False):
        """Issue an AlltoAll of x's rows (in_splits rows to each rank; None = equal). Returns a handle.

        blocking: wait for it here (the layer, when nothing overlaps the AlltoAll); otherwise it is
        issued asynchronously and `finish` waits (the chunked pipeline). Both are moe_lab.dispatch's."""
        W = self.W
        rows = in_splits if in_splits is not None else [x.shape[0] // W] * W
        row_bytes = x.element_size() * (x[0].numel() if x.shape[0] else int(torch.tensor(x.shape[1:]).prod()))
        msgs = classify(self.rank, [r * row_bytes for r in rows], W, self.nodes)
        mine = self.per_collective.setdefault(name, {t: [0, 0] for t in LINK_TYPES})
        for t in LINK_TYPES:
            self.bytes[t] += sum(msgs[t])
            self.messages[t] += len(msgs[t])
            mine[t][0] += len(msgs[t])
            mine[t][1] += sum(msgs[t])
        note(name, "ep", x)
        t0 = time.perf_counter()
        work = None
        if blocking:
            y = plain_all_to_all(x, out_splits, in_splits, self.group)  # counts its own backward
        else:
            y, work = all_to_all_async(x, out_splits, in_splits, self.group)  # counts its own backward
        t_issued = time.perf_counter()
        self.events.append((name, chunk, "wait", t0, t_issued))  # issuing blocks the rank too
        ready = t_issued
        if self.link is not None and msgs["inter"]:  # EMULATED: the NIC sends the inter-node messages in turn
            self._nic_free = max(t_issued, self._nic_free) + self.link.seconds(msgs["inter"])
            ready = self._nic_free
        return (y, work, ready, name, chunk, t0)

    def finish(self, handle):
        """Wait for an issued AlltoAll, then for what is left of its emulated link time; returns its output.

        The emulated time runs from the moment the collective is issued (after the NIC's earlier
        messages): whatever the rank does meanwhile (the experts of another chunk) hides it; what is
        left when the rank starts waiting comes on top of the real transfer.
        """
        y, work, ready, name, chunk, t_issue = handle
        t_wait = time.perf_counter()
        left = ready - t_wait  # emulated time not yet hidden behind other work
        if work is not None:
            work.wait()
        if left > 0:
            time.sleep(left)  # EMULATED link time
        t_end = time.perf_counter()
        self.events.append((name, chunk, "comm", t_issue, t_end))
        self.events.append((name, chunk, "wait", t_wait, t_end))
        if chunk is not None:
            self.waited[name] = self.waited.get(name, 0.0) + t_end - t_wait
        return y

    def a2a(self, x, out_splits=None, in_splits=None, group=None, name="all_to_all"):
        """A blocking AlltoAll (dispatch.ragged_exchange / padded_exchange call it as `a2a`)."""
        return self.finish(self.start(x, out_splits, in_splits, name, blocking=True))

    def exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The count exchange through the meter: counts [E] -> [W, m] rows each source sends my experts."""
        return self.a2a(counts, None, None, name="all_to_all (counts)").view(self.W, -1)

    def summary(self) -> dict:
        return dict(link_bytes=dict(self.bytes), link_messages=dict(self.messages), events=list(self.events),
                    per_collective={k: {t: list(v) for t, v in d.items()} for k, d in self.per_collective.items()})


# ---- what the real (shared-memory) link does here: the yardstick the emulated link is scaled from ----
def time_alltoall(ctx, rows_per_peer: int, d: int, reps: int) -> list:
    """Rank function: seconds of `reps` bare equal-split AlltoAlls of rows_per_peer rows of d floats per peer."""
    W = ctx.world_size
    src = torch.ones(W * rows_per_peer, d)
    dst = torch.empty_like(src)
    out = []
    for _ in range(reps):
        dist.barrier(group=ctx.group)
        t = time.perf_counter()
        dist.all_to_all_single(dst, src, group=ctx.group)
        out.append(time.perf_counter() - t)
    return out


def measure_link(cluster, d: int = 64, rows_per_peer: int = 1024, reps: int = 9):
    """The ranks' own AlltoAll as a LinkModel: latency per message and bandwidth per rank.

    A 1-row AlltoAll is all latency: t_small / (W − 1) per message. A big one adds the bytes:
    (W − 1) · rows · d · 4 bytes in t_big − t_small. Fastest of reps (what the link can do when the
    machine lets it), max over ranks. A yardstick, not a result: it moves with the machine's load.
    """
    W = cluster.world_size
    small = np.min(np.max(cluster.run(time_alltoall, 1, d, reps), axis=0))
    big = np.min(np.max(cluster.run(time_alltoall, rows_per_peer, d, reps), axis=0))
    sent = (W - 1) * rows_per_peer * d * 4
    latency = small / max(W - 1, 1)
    bandwidth = sent / max(big - small, 1e-6)
    return LinkModel(bandwidth_GBps=round(bandwidth / 1e9, 4), latency_us=round(latency * 1e6, 1))


def slower(link, factor: float):
    """A link `factor` times slower: latency × factor, bandwidth / factor."""
    return LinkModel(bandwidth_GBps=link.bandwidth_GBps / factor, latency_us=link.latency_us * factor)

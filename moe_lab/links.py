"""LinkMeter: one rank's AlltoAlls for one step — counted per link type, delayed by the emulated link, timed.

Every AlltoAll of the layer goes through `start` (issue it, asynchronously) and `finish` (wait for
it). On the way the meter
  * counts the messages and bytes this rank sends per link type (moe_lab.topology.classify),
    which become StepTrace.link_messages / link_bytes;
  * emulates the slow inter-node link when the config has one: the rank's one NIC is busy
    latency + bytes / bandwidth per inter-node message, one message after another, so a
    collective is not "done" before the NIC would have sent it. This is an EMULATION (a sleep):
    the bytes really travel through shared memory at intra-node speed;
  * records a timeline: (phase, chunk, kind, start, end) with kind "compute", "comm" (a
    collective in flight, issue to done) or "wait" (the rank blocked on one). perf_counter is
    one system-wide clock on Linux, so ranks' timestamps line up.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol

from .comm import note
from .topology import LINK_TYPES, classify


class LinkMeter:
    """Per-step, per-rank bookkeeping of the EP AlltoAlls (forward only)."""

    def __init__(self, group, nodes: int = 1, link=None, timer=None):
        self.group, self.nodes, self.link = group, nodes, link
        self.W, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.bytes = {t: 0 for t in LINK_TYPES}
        self.messages = {t: 0 for t in LINK_TYPES}
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
        self.events.append((name, chunk, "compute" if name in ("router", "experts") else "comm", t, time.perf_counter()))

    def start(self, x, out_splits=None, in_splits=None, name="all_to_all", chunk=None):
        """Issue an AlltoAll of x's rows (in_splits rows to each rank; None = equal). Returns a handle."""
        W = self.W
        rows = in_splits if in_splits is not None else [x.shape[0] // W] * W
        row_bytes = x.element_size() * (x[0].numel() if x.shape[0] else int(torch.tensor(x.shape[1:]).prod()))
        msgs = classify(self.rank, [r * row_bytes for r in rows], W, self.nodes)
        for t in LINK_TYPES:
            self.bytes[t] += sum(msgs[t])
            self.messages[t] += len(msgs[t])
        note(name, "ep", x)
        t0 = time.perf_counter()
        if x.requires_grad:
            y = funcol.all_to_all_single_autograd(x, out_splits, in_splits, self.group)
        else:
            y = funcol.all_to_all_single(x, out_splits, in_splits, self.group)
        ready = t0
        if self.link is not None and msgs["inter"]:  # EMULATED: the NIC sends the inter-node messages in turn
            self._nic_free = max(t0, self._nic_free) + self.link.seconds(msgs["inter"])
            ready = self._nic_free
        return (y, ready, name, chunk, t0)

    def finish(self, handle):
        """Wait for an issued AlltoAll (and for the emulated NIC); returns its output."""
        y, ready, name, chunk, t_issue = handle
        t_wait = time.perf_counter()
        if isinstance(y, funcol.AsyncCollectiveTensor):
            y = funcol.wait_tensor(y)
        left = ready - time.perf_counter()
        if left > 0:
            time.sleep(left)  # EMULATED link time
        t_end = time.perf_counter()
        self.events.append((name, chunk, "comm", t_issue, t_end))
        self.events.append((name, chunk, "wait", t_wait, t_end))
        if chunk is not None:
            self.waited[name] = self.waited.get(name, 0.0) + t_end - t_wait
        if y.requires_grad:  # backward sends dL/dy back along the same rows: count it too
            y.register_hook(lambda g: note(f"{name} (backward)", "ep", g))
        return y

    def a2a(self, x, out_splits=None, in_splits=None, group=None, name="all_to_all"):
        """A blocking AlltoAll (dispatch.ragged_exchange / padded_exchange call it as `a2a`)."""
        return self.finish(self.start(x, out_splits, in_splits, name))

    def exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The count exchange through the meter: counts [E] -> [W, m] rows each source sends my experts."""
        return self.a2a(counts, None, None, name="all_to_all (counts)").view(self.W, -1)

    def summary(self) -> dict:
        return dict(link_bytes=dict(self.bytes), link_messages=dict(self.messages), events=list(self.events))

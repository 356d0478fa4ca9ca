"""Cluster: a persistent set of real ranks (processes) that a notebook or script drives.

Ranks start once and stay: each slider move is one command over a pipe, not a new process
group. Rank r gets its own process, a torch.distributed process group (gloo on CPU, NCCL when
every rank has a GPU) and runs `fn(ctx, *args)` for every `run`.

Failure contract: a rank that raises, exits or is killed surfaces here as `RankError` naming the
rank (with its traceback) within about a second; a rank that hangs surfaces as `ClusterTimeout`
after `timeout` seconds. Either way every rank is killed and the next call starts fresh ones.
Ranks also exit by themselves when this process dies (a kernel restart).
"""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import wait

from . import wire
from .config import check_nodes, check_world_size
from .failures import ClusterTimeout, RankError, _collective_timeout, _failure  # noqa: F401 (public here too)
from .paths import usable_cores
from .prewarm import PRELOAD as _PRELOAD  # noqa: F401 - the forkserver's preload (kept importable here)
from .prewarm import forkserver_context

@dataclass
class RankContext:
    """What `fn(ctx, ...)` gets on a rank."""

    rank: int
    world_size: int
    backend: str
    device: object
    group: object = None  # the default (world) process group
    nodes: int = 1  # the ranks are split over this many (emulated) nodes: rank r on node r // (W / nodes)
    _state: dict = field(default_factory=dict, repr=False)

    def state(self, owner: str) -> dict:
        """A dict that survives between calls on this rank, owned by one module (e.g. "step",
        "train"): each module keeps and evicts only its own state."""
        return self._state.setdefault(owner, {})


def pick_backend(world_size: int, backend: str = "auto") -> str:
    """NCCL when every rank can have its own GPU, gloo otherwise."""
    import torch
    import torch.distributed as dist

    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend={backend!r}: choose 'auto', 'gloo' or 'nccl'")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    nccl_ok = dist.is_nccl_available() and gpus >= world_size
    if backend == "nccl" and not nccl_ok:
        raise ValueError(f"backend='nccl' needs one GPU per rank: world_size={world_size} but {gpus} GPU(s) "
                         "visible; use backend='gloo' or 'auto'")
    if backend == "auto":
        return "nccl" if nccl_ok else "gloo"
    return backend


def check_importable(fn) -> None:
    """Ranks import `fn` by name, so it must live in a module, not a notebook cell or a lambda."""
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module == "__main__":
        import __main__

        if not getattr(__main__, "__file__", None):
            raise ValueError(f"fn {qual!r} is defined in a notebook cell (module __main__), which the ranks "
                             "cannot import; put it in a .py module and import it from there")
    if "<lambda>" in qual or "<locals>" in qual:
        raise ValueError(f"fn {qual!r} is a lambda or a nested function, which the ranks cannot import; "
                         "define it at the top level of a .py module")


class Cluster:
    """Persistent worker ranks. `with Cluster(world_size=8) as cluster: cluster.step(cfg)`.

    world_size  ranks (processes); backend 'auto' | 'gloo' | 'nccl'; timeout (s) for a call and
    for the process group's collectives; threads per rank (default: cores // ranks, at least 1,
    so ranks don't oversubscribe the cores); nodes: the ranks form this many nodes of W / nodes
    ranks each (chapter 7; on one machine the node boundary is a label the traces count by).
    """

    def __init__(self, world_size: int = 8, backend: str = "auto", timeout: float = 30.0,
                 threads: int | None = None, start: bool = True, nodes: int = 1):
        check_nodes(world_size, nodes)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout={timeout!r}: must be a number of seconds > 0")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads={threads!r}: must be a whole number >= 1 or None")
        self.world_size, self.timeout, self.nodes = world_size, float(timeout), nodes
        self.backend = pick_backend(world_size, backend)
        self.threads = threads or max(1, usable_cores() // world_size)
        self._procs, self._conns, self._dirs = [], [], []  # shared with the finalizer: mutate in place
        self._seq = 0
        # one call at a time: a widget callback on another kernel thread must not interleave its
        # commands and replies with a cell's call on the same pipes
        self._lock = threading.RLock()
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._conns, self._dirs)
        if start:
            self.start()

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def start(self) -> "Cluster":
        """Start the ranks and their process group (a fresh rendezvous file: no port, no collision)."""
        with self._lock:
            return self._start()

    def _start(self) -> "Cluster":
        if self.running:
            return self
        _stop(self._procs, self._conns, self._dirs)
        ctx = forkserver_context()  # usually already running: started when moe_lab was imported
        tmp = tempfile.mkdtemp(prefix="moe_lab_")
        self._dirs.append(tmp)
        init = os.path.join(tmp, "rendezvous")
        # the forkserver may have started before this process changed sys.path or its environment:
        # every rank gets them as they are now
        here = (list(sys.path), dict(os.environ))
        for rank in range(self.world_size):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=_worker, name=f"moe_lab-rank{rank}", daemon=True,
                            args=(rank, self.world_size, self.backend, init, self.timeout, self.threads,
                                  child_end, os.getpid(), here, self.nodes))
            p.start()
            child_end.close()
            self._procs.append(p)
            self._conns.append(parent_end)
        self._gather(0, "start")
        return self

    def close(self) -> None:
        """Ask every rank to leave, then kill any that does not within a second. Idempotent."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        for c in self._conns:
            try:
                c.send(None)
            except (OSError, EOFError):
                pass
        deadline = time.monotonic() + 1.0
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        _stop(self._procs, self._conns, self._dirs)

    def restart(self) -> "Cluster":
        with self._lock:
            _stop(self._procs, self._conns, self._dirs)
            return self._start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return f"Cluster(world_size={self.world_size}, backend={self.backend!r}, {state})"

    # ---- calls ---------------------------------------------------------------------------------
    def run(self, fn, *args, **kwargs) -> list:
        """fn(ctx, *args, **kwargs) on every rank; returns the per-rank results, rank order."""
        check_importable(fn)
        with self._lock:
            seq = self._seq + 1
            try:  # one message for every rank (pickled again per rank only to hand out shared tensors)
                msg, shared = _message(seq, fn, args, kwargs)
            except Exception as e:  # noqa: BLE001 - tell the user which argument cannot travel
                raise TypeError(f"the arguments of {fn.__qualname__} cannot be sent to the ranks: {e}") from e
            if not self.running:
                self.start()
            self._seq = seq
            for r, c in enumerate(self._conns):
                c.send_bytes(msg if r == 0 or not shared else _message(seq, fn, args, kwargs)[0])
            return self._gather(seq, getattr(fn, "__qualname__", "fn"))

    def step(self, cfg, tokens_per_rank: int = 512, skew: float = 0.0, backward: bool = False):
        """One seeded step of the MoE layer on every rank, merged into a StepTrace."""
        from .config import check_skew, check_tokens_per_rank
        from .step import step_on_rank
        from .trace import StepTrace

        cfg.check_world(self.world_size)
        cfg.check_nodes(self.world_size, self.nodes)
        check_tokens_per_rank(tokens_per_rank)
        cfg.check_chunks(tokens_per_rank)
        check_skew(skew)
        t0 = time.perf_counter()
        trace = StepTrace.merge(self.run(step_on_rank, cfg, tokens_per_rank, skew, bool(backward)))
        trace.extra.update(cfg=cfg, skew=skew, backward=bool(backward), latency_s=time.perf_counter() - t0)
        return trace

    def _read(self, r: int, seq: int):
        """Rank r's reply: ("ok", result), ("err", traceback), ("dead", exit code) or None if stale."""
        conn, proc = self._conns[r], self._procs[r]
        if conn.poll():
            try:
                reply_seq, ok, value = wire.loads(conn.recv_bytes())
            except (EOFError, OSError):
                proc.join(0.5)
                return "dead", proc.exitcode
            if reply_seq != seq:
                return None
            return ("ok" if ok else "err"), value
        proc.join(0.5)  # only the process sentinel fired: it exited without a reply
        return "dead", proc.exitcode

    def _gather(self, seq: int, what: str) -> list:
        """Wait for every rank's reply to call `seq`, watching the pipes *and* the processes."""
        P = self.world_size
        results, errors, dead = [None] * P, {}, {}
        pending = set(range(P))
        deadline = time.monotonic() + self.timeout
        settle = None  # after a first failure, a short wait to learn which rank caused it
        failed_at = None  # seconds into the call of the first failure
        try:
            while pending:
                limit = deadline if settle is None else min(deadline, settle)
                left = limit - time.monotonic()
                if left <= 0:
                    break
                waitables = [self._conns[r] for r in pending] + [self._procs[r].sentinel for r in pending]
                for obj in wait(waitables, timeout=left):
                    r = _owner(obj, self._conns, self._procs)
                    if r not in pending:
                        continue
                    reply = self._read(r, seq)
                    if reply is None:
                        continue  # a stale reply to an interrupted call
                    kind, value = reply
                    {"ok": results, "err": errors, "dead": dead}[kind][r] = value
                    pending.discard(r)
                    if kind != "ok" and settle is None:
                        settle = time.monotonic() + 0.5
                        failed_at = self.timeout - (deadline - time.monotonic())
        except KeyboardInterrupt:
            _stop(self._procs, self._conns, self._dirs)
            warnings.warn("interrupted: all ranks were stopped; the next call starts fresh ones", stacklevel=3)
            raise
        if not pending and not errors and not dead:
            return results
        _stop(self._procs, self._conns, self._dirs)  # never leave a half-broken group behind
        raise _failure(what, errors, dead, pending, self.timeout, failed_at)


def _message(seq, fn, args, kwargs):
    """(bytes, whether a tensor went as a shared-memory handle: then each rank needs its own message).
    The call itself is wrapped in a plain (seq, bytes) pair, so a rank that cannot unpickle it (a
    module it cannot import) still knows which call to answer with its traceback."""
    before = wire.handles_made()
    payload = wire.dumps((fn, args, kwargs))
    return pickle.dumps((seq, payload), protocol=pickle.HIGHEST_PROTOCOL), wire.handles_made() != before


def _owner(obj, conns, procs) -> int:
    for r, (c, p) in enumerate(zip(conns, procs)):
        if obj is c or obj == p.sentinel:
            return r
    raise KeyError(obj)


def _stop(procs, conns, dirs) -> None:
    """Kill every rank and forget it (also run by the finalizer at GC and interpreter exit)."""
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(2.0)
    for c in conns:
        c.close()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    procs.clear()
    conns.clear()
    dirs.clear()


# ---- the rank side ---------------------------------------------------------------------------
def _watch_parent(parent_pid: int, ppid: int) -> None:
    """Exit when the driving process dies (kernel restart), even mid-collective."""
    while True:
        time.sleep(0.2)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:
            pass
        if os.getppid() != ppid:
            os._exit(3)


def _worker(rank, world_size, backend, init_file, timeout, threads, conn, parent_pid, here=None, nodes=1):
    import torch
    import torch.distributed as dist

    if here is not None:  # the parent's sys.path and environment now, not when the forkserver started
        sys.path[:] = here[0]
        os.environ.update(here[1])
        for key in set(os.environ) - set(here[1]):
            del os.environ[key]

    from .device import host_only, rank_device

    torch.set_num_threads(threads)  # before the first torch op: ranks must not fight over cores
    threading.Thread(target=_watch_parent, args=(parent_pid, os.getppid()), daemon=True).start()
    try:
        device, device_kwargs = rank_device(backend, rank)
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=_collective_timeout(timeout)), **device_kwargs)
    except BaseException:  # noqa: BLE001 - report everything to the parent
        conn.send((0, False, traceback.format_exc()))
        return
    ctx = RankContext(rank, world_size, backend, device, dist.group.WORLD, nodes)
    conn.send((0, True, None))
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            break
        call = pickle.loads(msg) if msg else None
        if call is None:
            break
        seq, payload = call
        try:
            fn, args, kwargs = wire.loads(payload)
            result = fn(ctx, *args, **kwargs)
            host_only(result)  # only CPU tensors cross back to the parent
            conn.send_bytes(wire.dumps((seq, True, result)))
        except BaseException:  # noqa: BLE001
            conn.send((seq, False, traceback.format_exc()))
    dist.destroy_process_group()

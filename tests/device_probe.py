"""The wrong-device probe: proves, without a GPU, that a rank function hands collectives only
tensors on the rank's device.

On an NCCL rank `ctx.device` is `cuda:r` while torch's default device stays the CPU, so two bugs
reach a collective with a CPU tensor and fail at once: a tensor made without `device=`, and host
data (seeded weights and tokens, tensors the parent sent) never moved with `.to(ctx.device)`.
Here the ranks run gloo on the CPU, where both go unnoticed, so inside `probe`:
  - the default device is "meta" (not the rank's device): a tensor made without `device=` is meta;
  - seeded data and the parent's tensors are `HostTensor`s until moved with `.to(device)`;
  - every collective torch offers is wrapped to assert each tensor it gets is a plain tensor on
    `ctx.device`, naming the collective and the line that called it.
Results still cross back to the parent through the Cluster's reply check (CPU tensors only).

Adding a rank function to the probe is one line in tests/test_device_probe.py:
    case("my variant", my_module.my_step_on_rank, cfg, 16, expect=(A2A,))
A new function that draws seeded data on the host (like moe_lab.workload's) joins HOST_SOURCES.
"""
from __future__ import annotations

import functools
import importlib
import sys
import threading
import traceback
from collections import Counter

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol

# (module, name) of every collective a rank function might call: plain, functional (with and
# without autograd) and the deprecated autograd-aware torch.distributed.nn.functional ones.
_PLAIN = ("all_to_all_single", "all_to_all", "all_reduce", "all_gather", "all_gather_into_tensor",
          "reduce_scatter", "reduce_scatter_tensor", "broadcast", "reduce", "gather", "scatter",
          "send", "recv", "isend", "irecv", "batch_isend_irecv")
_FUNCTIONAL = ("all_to_all_single", "all_to_all_single_autograd", "all_reduce", "all_reduce_inplace",
               "all_gather_tensor", "all_gather_tensor_autograd", "reduce_scatter_tensor",
               "reduce_scatter_tensor_autograd", "broadcast", "all_reduce_coalesced")


def _targets():
    found = [(dist, n) for n in _PLAIN if hasattr(dist, n)]
    found += [(funcol, n) for n in _FUNCTIONAL if hasattr(funcol, n)]
    try:
        import torch.distributed.nn.functional as dnnf

        found += [(dnnf, n) for n in ("all_to_all_single", "all_reduce", "all_gather", "broadcast", "reduce")
                  if hasattr(dnnf, n)]
    except ImportError:
        pass
    return found


class ByName:
    """An argument resolved on the rank: ByName("student_dispatch:dispatch"), for functions of
    modules only the rank can import (e.g. files a notebook wrote into a folder on `path`)."""

    def __init__(self, ref: str):
        self.ref = ref

    def resolve(self):
        module, _, attr = self.ref.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


def _tensors(value, where):
    """(where, tensor) for every tensor in an argument, lists/tuples/dicts included."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{where}[{k!r}]")


def _caller() -> str:
    """file:line of the first frame outside torch and this file: the line that called the collective."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("device_probe.py"):
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "?"


_inside = threading.local()  # a collective that calls another (functional -> plain) counts once


def _checked(op: str, fn, device, calls: Counter):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_inside, "depth", 0):
            return fn(*args, **kwargs)
        for where, t in _tensors(list(args) + list(kwargs.values()), "args"):
            if isinstance(t, HostTensor):
                raise AssertionError(f"{op} got a host tensor ({where}, shape {tuple(t.shape)}: seeded or sent "
                                     f"data never moved to the rank's device {device}); called from {_caller()}")
            if t.device != device:
                raise AssertionError(f"{op} got a tensor on {t.device} ({where}, shape {tuple(t.shape)}) but the "
                                     f"rank's device is {device}; called from {_caller()}")
        calls[op] += 1
        _inside.depth = 1
        try:
            return fn(*args, **kwargs)
        finally:
            _inside.depth = 0

    wrapper.__wrapped_by_probe__ = True
    return wrapper


def _patch(device, calls):
    """Wrap every collective (and host source) in its module *and* wherever a module outside torch
    imported it by name (`from torch.distributed import all_reduce`); torch's internals stay as they are."""
    undo = []
    ours = [m for n, m in list(sys.modules.items()) if n.partition(".")[0] != "torch" and m is not None
            and m is not sys.modules[__name__]]
    targets = [(module, name, _checked(f"{module.__name__.rpartition('.')[2]}.{name}", getattr(module, name), device, calls))
               for module, name in _targets()]
    for ref in HOST_SOURCES:
        module = importlib.import_module(ref.partition(":")[0])
        name = ref.partition(":")[2]
        targets.append((module, name, _host_source(getattr(module, name))))
    for module, name, wrapped in targets:
        original = getattr(module, name)
        if getattr(original, "__wrapped_by_probe__", False):
            continue
        for d in [vars(module)] + [getattr(m, "__dict__", {}) for m in ours]:
            for key, value in list(d.items()):
                if value is original:
                    d[key] = wrapped
                    undo.append((d, key, original))
    return undo


class HostTensor(torch.Tensor):
    """A tensor that is on the host, not on the rank's device: seeded data drawn on the CPU and
    tensors the parent sent. Ops keep the mark (on a GPU, mixing it with device tensors fails);
    moving it with `.to(device)` / `as_tensor(..., device=)` removes it. A collective refuses it:
    that is the "forgot .to(ctx.device)" bug, which a CPU rank (ctx.device is the CPU) cannot see."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = super().__torch_function__(func, types, args, kwargs)
        moved = getattr(func, "__name__", "") in ("to", "as_tensor", "tensor") and (
            "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:]))
        if moved and isinstance(out, HostTensor):
            with torch._C.DisableTorchFunctionSubclass():
                return out.as_subclass(torch.Tensor)
        return out


def _on_host(value):
    """value with every tensor in it marked as HostTensor (lists, tuples and dicts walked)."""
    if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
        return value.as_subclass(HostTensor)
    if isinstance(value, (list, tuple)):
        return type(value)(_on_host(v) for v in value)
    if isinstance(value, dict):
        return {k: _on_host(v) for k, v in value.items()}
    return value


# Functions whose tensors are seeded host data (the same numbers in the parent and on every rank).
HOST_SOURCES = ["moe_lab.workload:init_weights", "moe_lab.workload:init_shared_weights",
                "moe_lab.workload:make_tokens", "moe_lab.workload:upstream_grad",
                "moe_lab.train:task", "moe_lab.train:batch"]


def _host_source(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return _on_host(fn(*args, **kwargs))

    wrapper.__wrapped_by_probe__ = True
    return wrapper


def probe(ctx, fn, *args, path: str | None = None, **kwargs):
    """Run fn(ctx, *args, **kwargs) on this rank with the default device set to "meta" and every
    collective checked. Returns (fn's result, {collective: calls}); fn may be a "module:name"
    string and args may hold ByName(...) (both resolved here, after `path` joins sys.path)."""
    if path and path not in sys.path:
        sys.path.insert(0, path)
    fn = ByName(fn).resolve() if isinstance(fn, str) else fn
    args = [a.resolve() if isinstance(a, ByName) else _on_host(a) for a in args]  # the parent's tensors are host data
    kwargs = {k: _on_host(v) for k, v in kwargs.items()}
    calls = Counter()
    undo = _patch(ctx.device, calls)
    import moe_lab.allreduce  # NCCL ranks all-reduce with dist.all_reduce: take that path on gloo too
    undo.append((moe_lab.allreduce.__dict__, "ONE_ROUND_MAX", moe_lab.allreduce.ONE_ROUND_MAX))
    moe_lab.allreduce.ONE_ROUND_MAX = 0
    before = torch.get_default_device()
    saved, ctx._state = ctx._state, {}  # no cached weights or layers from an unprobed call, none left behind
    torch.set_default_device("meta")  # anything made without device= is now on the wrong device
    try:
        result = fn(ctx, *args, **kwargs)
    finally:
        torch.set_default_device(None if before.type == "cpu" else before)
        ctx._state = saved
        for d, key, original in reversed(undo):
            d[key] = original
    return result, dict(calls)

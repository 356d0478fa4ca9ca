"""Plain data between the grader and a student's kernel: JSON plus `.npy` files, never pickle.

The grader calls a student's function *in the kernel* on inputs it chose and gets back only data:
numbers, strings, lists, dicts and tensors. Unpickling would run code the student chose; loading
JSON and `np.load(allow_pickle=False)` cannot. Whatever object the student returns (one whose
`__eq__` is always true, a tensor subclass, a lazy wrapper) arrives in the grader as a plain value
or not at all.

A request folder holds `call.json` (what to call, on what) and one `.npy` per tensor; the kernel
answers with `result.json` and its own `.npy` files in the same folder. Three kinds of references
travel grader -> kernel only, and are resolved in the kernel:

    {"remote": "top_k_gating", "attr": [...]}   a name in the kernel's namespace (the student's
                                                function, a module they wrote, the notebook's Cluster)
    {"ref": "ex6_ranks:check_dispatch"}         a function of an importable module
    {"config": {...}}                           a MoEConfig, by its fields

Gradients: when an input tensor requires grad, the kernel keeps the call's graph and answers a
later `vjp` request with the input gradients, so hidden checks that back-propagate through the
student's function still work (see judge.Remote).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

MAX_JSON = 16 << 20  # bytes of result.json the grader reads
MAX_ARRAY = 512 << 20  # bytes of one .npy the grader loads
MAX_ITEMS = 100_000  # values in one answer


class WireError(ValueError):
    """The answer is not plain data (or is too big): the message says what was found."""


# --- encoding (both sides) -------------------------------------------------------------------------


class Encoder:
    """Turns a value into JSON-able data, writing tensors into `folder` as .npy files."""

    def __init__(self, folder, refs=None):
        self.folder, self.refs, self.n, self.tensors = Path(folder), refs, 0, []

    def __call__(self, x, depth=0):
        import numpy as np
        import torch

        self.n += 1
        if self.n > MAX_ITEMS or depth > 20:
            raise WireError(f"more than {MAX_ITEMS} values, or nested more than 20 deep")
        if x is None or type(x) in (bool, str):
            return x
        if isinstance(x, bool):
            return bool(x)
        if isinstance(x, int):
            return int(x)  # an int subclass arrives as a plain int
        if isinstance(x, float):
            return {"float": repr(float(x))} if not math.isfinite(x) else float(x)
        if isinstance(x, torch.Tensor):
            return self._tensor(x)
        if isinstance(x, np.ndarray):
            return self._tensor(torch.from_numpy(np.array(x, copy=True)))
        if isinstance(x, np.generic):
            return self(x.item(), depth + 1)
        if isinstance(x, torch.dtype):
            return {"dtype": str(x).removeprefix("torch.")}
        if isinstance(x, tuple):
            return {"tuple": [self(v, depth + 1) for v in x]}
        if isinstance(x, list):
            return [self(v, depth + 1) for v in x]
        if isinstance(x, dict):
            if not all(type(k) in (str, int) for k in x):
                raise WireError("dict keys must be strings or ints")
            return {"dict": [[self(k, depth + 1), self(v, depth + 1)] for k, v in x.items()]}
        if self.refs is not None:  # grader -> kernel only
            ref = self.refs(x)
            if ref is not None:
                return ref
        raise WireError(f"a {type(x).__module__}.{type(x).__qualname__} is not plain data "
                        "(return tensors, numbers, strings, or lists / tuples / dicts of them)")

    def _tensor(self, t):
        import numpy as np
        import torch

        self.tensors.append(t)  # as given: the kernel keeps it for a later vjp
        grad = bool(t.requires_grad)
        t = torch.Tensor.detach(t)
        if type(t) is not torch.Tensor:  # a subclass: only its data travels
            t = t.as_subclass(torch.Tensor)
        dtype = str(t.dtype).removeprefix("torch.")
        data = t.cpu()
        if t.dtype == torch.bfloat16:
            data = data.float()
        name = f"t{len(self.tensors) - 1}.npy"
        array = data.resolve_conj().resolve_neg().numpy()
        np.save(self.folder / name, np.ascontiguousarray(array).reshape(array.shape),
                allow_pickle=False)
        return {"tensor": name, "dtype": dtype, "grad": grad}


# --- decoding ----------------------------------------------------------------------------------------


class Decoder:
    """JSON-able data back into values; `resolve` handles the grader's references (kernel side)."""

    def __init__(self, folder, resolve=None):
        self.folder, self.resolve, self.tensors = Path(folder), resolve, []

    def __call__(self, x):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            return [self(v) for v in x]
        if not isinstance(x, dict) or len(x) == 0:
            raise WireError(f"unexpected data: {type(x).__name__}")
        if "tensor" in x:
            return self._tensor(x)
        if "tuple" in x:
            return tuple(self(v) for v in x["tuple"])
        if "dict" in x:
            return {self(k): self(v) for k, v in x["dict"]}
        if "float" in x:
            return float(x["float"])
        if "dtype" in x:
            import torch

            dtype = getattr(torch, str(x["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise WireError(f"unknown dtype {x['dtype']!r}")
            return dtype
        if self.resolve is not None:
            return self.resolve(x, self)
        raise WireError(f"unexpected data with keys {sorted(x)}")

    def _tensor(self, x):
        import numpy as np
        import torch

        name = str(x["tensor"])
        path = self.folder / name
        if "/" in name or not path.is_file() or path.stat().st_size > MAX_ARRAY:
            raise WireError(f"tensor file {name!r} missing or larger than {MAX_ARRAY >> 20} MB")
        array = np.load(path, allow_pickle=False)
        t = torch.from_numpy(np.array(array, copy=True))
        if x.get("dtype") == "bfloat16":
            t = t.to(torch.bfloat16)
        if x.get("grad") and t.is_floating_point():
            t.requires_grad_()
        self.tensors.append(t)
        return t


def write_json(path, data) -> None:
    tmp = Path(str(path) + ".part")
    tmp.write_text(json.dumps(data, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path):
    path = Path(path)
    if not path.is_file():
        raise WireError("no answer came back")
    if path.stat().st_size > MAX_JSON:
        raise WireError(f"the answer is larger than {MAX_JSON >> 20} MB")
    return json.loads(path.read_text(encoding="utf-8"))


# --- the kernel side -----------------------------------------------------------------------------------

_CALLS: dict = {}  # call id -> (input tensors, output tensors): kept for a later vjp request


def _resolve_in_kernel(x, decoder):
    """References the grader sends, resolved in the kernel's own world."""
    import importlib

    import __main__

    if "remote" in x:
        name = str(x["remote"])
        obj = vars(__main__)[name] if name in vars(__main__) else importlib.import_module(name)
        for part in x.get("attr", []):
            obj = getattr(obj, part)
        return obj
    if "ref" in x:
        module, _, qualname = str(x["ref"]).partition(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    if "config" in x:
        from moe_lab.config import MoEConfig

        return MoEConfig(**decoder(x["config"]))
    raise WireError(f"unexpected reference with keys {sorted(x)}")


def serve(folder) -> None:
    """Kernel side of one request: decode, call (or back-propagate), write the answer as data."""
    import torch

    folder = Path(folder)
    request = read_json(folder / "call.json")
    try:
        if request.get("kind") == "vjp":
            inputs, outputs = _CALLS[request["call"]]
            grads_out = Decoder(folder)(request["grads"])
            pairs = [(o, g) for o, g in zip(outputs, grads_out) if g is not None and o.requires_grad]
            wanted = [t for t in inputs if t.requires_grad]
            grads = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                        retain_graph=True, allow_unused=True) if pairs else [None] * len(wanted)
            it = iter(grads)
            value = [next(it) if t.requires_grad else None for t in inputs]
            answer = {"ok": Encoder(folder)(value)}
        else:
            decoder = Decoder(folder, _resolve_in_kernel)
            target = decoder(request["target"])
            args, kwargs = decoder(request["args"]), decoder(request["kwargs"])
            value = target(*args, **kwargs)
            encoder = Encoder(folder)
            answer = {"ok": encoder(value)}
            if any(t.requires_grad for t in decoder.tensors):
                _CALLS[request["call"]] = (decoder.tensors, encoder.tensors)
    except Exception as e:  # the student's error, reported as text
        answer = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:500] if str(e) else type(e).__name__}
    write_json(folder / "result.json", answer)


def config_fields(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}

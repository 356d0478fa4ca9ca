"""How a call and its result travel between the notebook and a rank over the rank's pipe.

Everything is pickled, except big tensors: those go through shared memory with
torch.multiprocessing's tensor reductions — the storage moves into shared memory once and only a
handle (a file descriptor passed over a socket) crosses the pipe, so a [8192, 64] output is not
copied through the pipe byte by byte. Small tensors (under `SHM_MIN_BYTES`) are cheaper to copy
than to hand over a descriptor, so they are pickled like everything else.

Shared means shared: a rank that changes a big argument tensor in place changes it for the
notebook and for the other ranks too (as with any torch.multiprocessing queue).
"""
from __future__ import annotations

import copyreg
import io
import pickle

SHM_MIN_BYTES = 1 << 18  # 256 KiB: below it, a copy is faster than passing a descriptor

_table: dict | None = None
_handles = 0  # tensors this process has sent as shared-memory handles


def handles_made() -> int:
    """How many tensors went by handle so far (a message holding one cannot be sent twice:
    each handle is fetched once)."""
    return _handles


def _reduce_tensor(t):
    """GPU tensors through CUDA IPC as a whole; CPU tensors as usual, their storage decides."""
    if t.device.type != "cpu":
        from torch.multiprocessing import reductions

        return reductions.reduce_tensor(t.detach() if t.requires_grad and not t.is_leaf else t)
    return t.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def _by_size(share):
    """A storage reducer: torch's shared-memory one for big storages, pickled bytes for small ones."""

    def reduce(storage):
        global _handles
        raw = getattr(storage, "_untyped_storage", storage)  # a TypedStorage wraps an UntypedStorage
        if raw.device.type != "cpu" or raw.nbytes() >= SHM_MIN_BYTES:
            _handles += 1
            return share(storage)
        return storage.__reduce__()

    return reduce


def _dispatch_table() -> dict:
    global _table
    if _table is None:
        import torch
        import torch.multiprocessing  # noqa: F401 - registers torch's reductions with ForkingPickler
        from multiprocessing.reduction import ForkingPickler

        table = dict(copyreg.dispatch_table)
        for cls, share in ForkingPickler._extra_reducers.items():
            if cls.__module__.startswith("torch") and "Storage" in cls.__name__:
                table[cls] = _by_size(share)
        table[torch.Tensor] = _reduce_tensor
        table[torch.nn.Parameter] = _reduce_tensor
        _table = table
    return _table


class _Pickler(pickle.Pickler):
    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = _dispatch_table()


def dumps(obj) -> bytes:
    """Bytes for one message (big tensors as shared-memory handles)."""
    buf = io.BytesIO()
    _Pickler(buf).dump(obj)
    return buf.getvalue()


def loads(data: bytes):
    """The object back (shared tensors are mapped, not copied)."""
    return pickle.loads(data)

"""Counting what the collectives move, so a notebook can print bytes per collective per step.

Each call site notes the tensor it hands to a collective; `counting()` collects the notes on
this rank (a rank is a process, so a module-level list is this rank's own).
"""
from __future__ import annotations

from contextlib import contextmanager

_log: list | None = None


def note(op: str, group: str, tensor) -> None:
    """Record one collective call: op (e.g. 'all_to_all'), the group's name, the payload."""
    if _log is not None:
        _log.append((op, group, tensor.numel() * tensor.element_size()))


@contextmanager
def counting():
    """with counting() as log: ... -> log is a list of (op, group, bytes) in call order."""
    global _log
    outer, _log = _log, []
    try:
        yield _log
    finally:
        _log = outer if outer is None else outer + _log

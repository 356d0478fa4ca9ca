"""Where things are: the package, the checkout it may sit in, and how many cores this process may use.

One home for facts that several modules need (the grader finds `solutions/` in the checkout;
the Cluster and the benchmarks split the cores over ranks).
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The checkout holding this package (editable install or source tree), None when installed."""
    root = PACKAGE_DIR.parent
    if root.name in ("site-packages", "dist-packages") or not (root / "pyproject.toml").exists():
        return None
    return root


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1

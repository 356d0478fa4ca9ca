"""python -m moe_lab demo | grade | make-exercises | bench

`demo` and the grader ship with the package. `bench` runs the benchmark suite, which lives in the
repository's benchmarks/ folder (not installed): it works from a checkout and says so elsewhere.
"""
from __future__ import annotations

import argparse
import sys


def _add_bench(sub) -> None:
    """The bench command, borrowed from the checkout's benchmarks/ when there is one."""
    from .paths import repo_root

    root = repo_root()
    if root is None or not (root / "benchmarks" / "cli.py").exists():
        p = sub.add_parser("bench", help="the benchmark suite (needs a checkout of the repository)")
        p.set_defaults(func=lambda args: _no_bench())
        return
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.cli import add_parser  # an ImportError here is a real bug: let it show

    add_parser(sub)


def _no_bench() -> int:
    print("python -m moe_lab bench: the benchmarks live in the repository's benchmarks/ folder, which an "
          "installed package does not include; run it from a checkout", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from . import cli_demo
    from .grading import add_parsers

    cli_demo.add_parser(sub)
    add_parsers(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad settings: say what to change, no traceback
        print(f"python -m moe_lab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""python -m moe_lab demo | bench | grade | make-exercises"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from . import cli_demo

    cli_demo.add_parser(sub)
    try:
        from . import grading

        grading.add_parsers(sub)
    except ImportError:
        pass
    try:
        from . import bench

        bench.add_parser(sub)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad settings: say what to change, no traceback
        print(f"python -m moe_lab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

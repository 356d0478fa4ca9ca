"""`python -m moe_lab bench` and `python benchmarks/run.py`: the command line of the performance suite."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub):
    from .suite import SECTIONS

    p = sub.add_parser("bench", help="time the layer against respawning, one process, padding, fairscale and gloo",
                       description="Side-by-side timings, each contender checked against the single-process "
                                   "reference; writes JSON (every raw sample) and a plotly summary.")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smallest sizes only (about a minute)")
    p.add_argument("--out", default="benchmarks/results", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--world-size", type=int, default=8, help="ranks for every section (default: %(default)s)")
    p.add_argument("--sections", default=None, metavar="a,b,c",
                   help="comma-separated subset of: " + ", ".join(SECTIONS) + " (default: all)")
    p.set_defaults(func=run_bench)
    return p


def run_bench(args) -> int:
    from .suite import exit_code, parse_sections, run_suite

    parse_sections(args.sections)  # a bad name fails before anything starts
    result = run_suite(quick=args.quick, out_dir=args.out, world_size=args.world_size, sections=args.sections)
    return exit_code(result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="moe_lab bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2

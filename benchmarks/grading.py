"""Grading throughput: the same class of submissions graded sandboxed and with --unsafe, side by side.

    python -m benchmarks.grading                       # 7 exercises x 20 submissions, --jobs 2
    python -m benchmarks.grading --per-exercise 3 --exercises ex1,ex3   # a small run

Each exercise's submissions alternate between the full solution and the untouched student copy
(both take every path through the checks). The two modes grade the same folder one after the other
in one process, so their ratio is the number to read on a shared machine; notebooks per minute and
the sandbox overhead are printed and written to benchmarks/results/grading.json.
Targets (issue 11): sandbox overhead <= 20 %; 140 notebooks in <= 10 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from .common import load_average, machine_info

REPO = Path(__file__).resolve().parents[1]


def make_class(folder: Path, exercises: list[str], per_exercise: int) -> int:
    """Submissions in `folder`: alternately solution and stub of each exercise; returns how many."""
    n = 0
    for name in exercises:
        for i in range(per_exercise):
            src = REPO / ("solutions" if i % 2 == 0 else "exercises") / f"{name}.ipynb"
            shutil.copy(src, folder / f"student{i:02d}_{name}.ipynb")
            n += 1
    return n


def grade_once(folder: Path, unsafe: bool, jobs: int) -> tuple[float, float, float]:
    """(seconds, points earned, points possible) for one grading run of the folder."""
    from moe_lab.grading import grade

    start = time.monotonic()
    results = grade([folder], REPO / "solutions", jobs=jobs, unsafe=unsafe, report=lambda text: None)
    return time.monotonic() - start, sum(r.score for r in results), sum(r.max_score or 0 for r in results)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grading", description=__doc__.splitlines()[0])
    p.add_argument("--per-exercise", type=int, default=20)
    p.add_argument("--exercises", default="", help="comma-separated prefixes, e.g. ex1,ex3 (default: all)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "grading.json"))
    args = p.parse_args(argv)
    names = sorted(q.stem for q in (REPO / "solutions").glob("*.ipynb"))
    if args.exercises:
        wanted = [w.strip() for w in args.exercises.split(",") if w.strip()]
        names = [n for n in names if any(n.startswith(w + "_") or n == w for w in wanted)]
    folder = Path(tempfile.mkdtemp(prefix="grading_bench_"))
    try:
        count = make_class(folder, names, args.per_exercise)
        rows = {}
        load_before = load_average()
        for mode, unsafe in (("sandbox", False), ("unsafe", True)):
            seconds, earned, possible = grade_once(folder, unsafe, args.jobs)
            rows[mode] = dict(seconds=seconds, notebooks=count, per_minute=60 * count / seconds,
                              points=earned, possible=possible)
            print(f"{mode:8s} {count} notebooks in {seconds:6.1f} s = {60 * count / seconds:5.1f} notebooks/min "
                  f"({earned:g} / {possible:g} points)")
        if rows["sandbox"]["points"] != rows["unsafe"]["points"]:
            print("WARNING: the two modes gave different points")
        overhead = rows["sandbox"]["seconds"] / rows["unsafe"]["seconds"] - 1
        at_140 = rows["sandbox"]["seconds"] / count * 140
        print(f"sandbox overhead {100 * overhead:+.0f} % (target <= 20 %); "
              f"140 notebooks would take ~{at_140 / 60:.1f} min sandboxed (target <= 10 min)")
        record = dict(exercises=names, per_exercise=args.per_exercise, jobs=args.jobs, modes=rows,
                      sandbox_overhead=overhead, projected_140_s=at_140, load_before=load_before,
                      load_after=load_average(), machine=machine_info())
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"written to {args.out}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

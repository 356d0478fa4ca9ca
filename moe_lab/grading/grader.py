"""Grading exercise notebooks: the student's answers, the original checks, a fresh kernel.

A submission is graded against its source in `solutions/`. Only the student's *solution cells*
are taken from the submission; every other cell (setup, the visible checks and the hidden checks the
student never saw) comes from the source, so deleting or rewriting a check changes nothing. The
assembled notebook runs top to bottom in a fresh kernel, with a limit per cell and per notebook:

    grade cell ran, no error          -> its points
    grade cell raised / timed out     -> 0 (a timed-out cell is interrupted; grading goes on)
    kernel died (os._exit, SIGKILL)   -> 0 for that cell and every cell after it

Printed text counts for nothing: a cell passes on the kernel's execute reply and the absence of
error outputs, never on what it prints. Running the kernel is moe_lab/grading/kernel.py's job;
building the notebooks (student copies, the assembled one) is moe_lab/grading/generate.py's.

    python -m moe_lab grade submissions/ --out scores.csv
    python -m moe_lab make-exercises [--check]
"""
from __future__ import annotations

import asyncio
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import repo_root
from . import generate as gen
from .kernel import run_notebook

DEFAULT_CELL_TIMEOUT = 60.0
DEFAULT_NOTEBOOK_TIMEOUT = 600.0
_REPO = repo_root() or Path.cwd()


@dataclass
class Part:
    grade_id: str
    max_points: float
    points: float = 0.0
    status: str = "not run"  # passed | failed | timed out | kernel died | not run
    message: str = ""


@dataclass
class Result:
    notebook: str
    source: str | None
    parts: list[Part] = field(default_factory=list)
    note: str = ""
    failed: bool = False  # the grader itself could not run it (no kernel): not the student's fault

    @property
    def score(self) -> float:
        return sum(p.points for p in self.parts)

    @property
    def max_score(self) -> float | None:
        return sum(p.max_points for p in self.parts) if self.source else None


# --- finding the submissions ---------------------------------------------------------------------


def find_notebooks(paths) -> list[Path]:
    """Notebooks named directly, and every notebook under a named folder (checkpoints skipped)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such notebook or folder")
    return found


# --- grading --------------------------------------------------------------------------------------


def _score(graded, verdicts: dict) -> list[Part]:
    parts, dead = [], False
    for i, cell in enumerate(graded.cells):
        if not gen.is_grade_cell(cell):
            if verdicts.get(i, ("",))[0] == "dead":
                dead = True
            continue
        part = Part(gen.grade_id(cell), float(gen.nbgrader_meta(cell).get("points", 0)))
        status, message = verdicts.get(i, (None, ""))
        if status == "ok":
            part.points, part.status = part.max_points, "passed"
        elif status == "error":
            part.status, part.message = "failed", message
        elif status == "timeout":
            part.status, part.message = "timed out", message
        elif status == "dead" or dead:
            part.status = "kernel died"
            part.message = "" if status == "dead" else "not run: the kernel died in an earlier cell"
        else:
            part.message = "not run: the notebook's time limit, or a kernel that stopped answering"
        dead = dead or status == "dead"
        parts.append(part)
    return parts


async def _grade_one(path: Path, sources: dict, limits: dict, gate: asyncio.Semaphore) -> Result:
    try:
        submission = gen.read_notebook(path)
    except Exception as e:  # not JSON, not a notebook
        submission, problem = None, f"could not read the notebook ({type(e).__name__}: {e})"[:300]
    else:
        problem = ""
    name = gen.match_source(path, submission, sources)
    if name is None:
        return Result(str(path), None, note=problem or "no matching exercise in the solutions folder")
    source = sources[name]
    if submission is None:
        parts = [Part(gid, pts, message=problem) for gid, pts in gen.graded_parts(source)]
        return Result(str(path), name, parts, note=problem)
    graded = gen.assemble(source, submission, name)
    try:
        async with gate:
            verdicts = await run_notebook(graded, **limits)
    except Exception as e:  # the kernel did not start: nothing the student did
        parts = [Part(gid, pts) for gid, pts in gen.graded_parts(source)]
        return Result(str(path), name, parts, note=f"could not grade: {type(e).__name__}: {e}"[:300], failed=True)
    return Result(str(path), name, _score(graded, verdicts))


def grade(paths, solutions_dir, cell_timeout=DEFAULT_CELL_TIMEOUT, notebook_timeout=DEFAULT_NOTEBOOK_TIMEOUT,
          jobs: int = 1, kernel_name: str = "python3") -> list[Result]:
    """Grade every notebook in `paths` (files or folders) against `solutions_dir`; one Result each."""
    sources = gen.load_sources(solutions_dir)
    if not sources:
        raise FileNotFoundError(f"no source notebooks in {solutions_dir}")
    notebooks = find_notebooks(paths)
    limits = dict(cell_timeout=cell_timeout, notebook_timeout=notebook_timeout, kernel_name=kernel_name)

    async def run_all():
        gate = asyncio.Semaphore(max(1, jobs))
        return await asyncio.gather(*(_grade_one(p, sources, limits, gate) for p in notebooks))

    return list(_run_to_completion(run_all()))


def _run_to_completion(coro):
    """asyncio.run, also from code that already runs an event loop (a Jupyter cell, a test that
    drives a browser): then the grading loop gets a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _num(x) -> str:
    return "" if x is None else (f"{x:g}" if x != int(x) else str(int(x)))


def format_table(results: list[Result]) -> str:
    """One block per notebook: each graded part with its points and verdict, then the total."""
    lines = []
    for r in results:
        lines.append(f"{r.notebook}" + (f"  ({r.source})" if r.source and Path(r.notebook).name != r.source else ""))
        width = max([len(p.grade_id) for p in r.parts] + [5])
        for p in r.parts:
            verdict = p.status + (f": {p.message}" if p.message else "")
            lines.append(f"  {p.grade_id:<{width}}  {_num(p.points):>3} / {_num(p.max_points):<3}  {verdict}")
        if r.note:
            lines.append(f"  note: {r.note}")
        lines.append(f"  {'total':<{width}}  {_num(r.score):>3} / {_num(r.max_score) or '-':<3}")
        lines.append("")
    return "\n".join(lines)


def write_csv(results: list[Result], path) -> list[str]:
    """notebook, score, max_score, then one column per graded part: the union over the notebooks,
    ordered by exercise and then by position in the exercise (so ex1's parts come first)."""
    order: dict[str, tuple] = {}
    for r in results:
        for i, p in enumerate(r.parts):
            order.setdefault(p.grade_id, (r.source or "", i))
    part_ids = sorted(order, key=order.get)
    columns = ["notebook", "score", "max_score", *part_ids]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in results:
            earned = {p.grade_id: _num(p.points) for p in r.parts}
            w.writerow([r.notebook, _num(r.score), _num(r.max_score), *(earned.get(g, "") for g in part_ids)])
    return columns


# --- command line ---------------------------------------------------------------------------------


def _default_dir(name: str) -> Path:
    """solutions/ or exercises/ of the current folder, else of the checkout this package sits in."""
    return Path(name) if Path(name).is_dir() or not (_REPO / name).is_dir() else _REPO / name


def _cmd_grade(args) -> int:
    solutions = Path(args.solutions) if args.solutions else _default_dir("solutions")
    try:
        results = grade(args.paths, solutions, args.cell_timeout, args.timeout, args.jobs)
    except (FileNotFoundError, ImportError) as e:
        print(f"grade: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("grade: interrupted; no scores written", file=sys.stderr)
        return 130
    if not results:
        print("grade: no notebooks found", file=sys.stderr)
        return 2
    print(format_table(results))
    total = sum(r.score for r in results)
    possible = sum(r.max_score or 0 for r in results)
    print(f"{len(results)} notebook(s) graded: {_num(total)} / {_num(possible)} points")
    if args.out:
        write_csv(results, args.out)
        print(f"scores written to {args.out}")
    broken = [r.notebook for r in results if r.failed]
    if broken:
        print(f"grade: could not run {len(broken)} notebook(s): {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


def _cmd_make_exercises(args) -> int:
    solutions = Path(args.solutions) if args.solutions else _default_dir("solutions")
    exercises = Path(args.exercises) if args.exercises else solutions.parent / "exercises"
    try:
        problems = gen.sync_exercises(solutions, exercises, check=args.check)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"make-exercises: {e}", file=sys.stderr)
        return 2
    if args.check:
        for line in problems:
            print(line)
        if problems:
            print(f"{exercises} is out of step with {solutions}: run `python -m moe_lab make-exercises`")
            return 1
        print(f"{exercises} is in step with {solutions} ({len(gen.source_notebooks(solutions))} notebooks)")
        return 0
    for line in problems:
        print(f"updated  {line}")
    print(f"{exercises}: {len(gen.source_notebooks(solutions))} exercise notebooks, {len(problems)} changed")
    return 0


def add_parsers(subparsers) -> None:
    """The `grade` and `make-exercises` subcommands of `python -m moe_lab`."""
    g = subparsers.add_parser("grade", help="grade exercise notebooks against solutions/ in fresh kernels")
    g.add_argument("paths", nargs="+", help="submitted notebooks, or folders of them")
    g.add_argument("--out", help="write one CSV row per notebook: notebook, score, max_score, one column per part")
    g.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, metavar="S",
                   help=f"seconds one cell may run (default {DEFAULT_CELL_TIMEOUT:g})")
    g.add_argument("--timeout", type=float, default=DEFAULT_NOTEBOOK_TIMEOUT, metavar="S",
                   help=f"seconds one whole notebook may run (default {DEFAULT_NOTEBOOK_TIMEOUT:g})")
    g.add_argument("--solutions", metavar="DIR", help="source notebooks with the hidden checks (default solutions/)")
    g.add_argument("--jobs", type=int, default=1, metavar="N", help="notebooks graded at the same time (default 1)")
    g.set_defaults(func=_cmd_grade)

    m = subparsers.add_parser("make-exercises", help="generate exercises/ from solutions/")
    m.add_argument("--check", action="store_true", help="change nothing; exit 1 if exercises/ is out of step")
    m.add_argument("--solutions", metavar="DIR", help="source notebooks (default solutions/)")
    m.add_argument("--exercises", metavar="DIR", help="student notebooks to write (default exercises/)")
    m.set_defaults(func=_cmd_make_exercises)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m moe_lab.grading", description="grade | make-exercises")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

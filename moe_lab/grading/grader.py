"""Grading submitted exercise notebooks into a score table a class can trust.

A submission is graded against its source in `solutions/`. Only the student's *answer cells* are
taken from the submission; every check comes from the source. Each submission gets

    a sandbox        its kernel runs in a bubblewrap box (moe_lab/grading/sandbox.py): own PID
                     namespace, no network, read-only system, fresh scratch/HOME, no view of
                     solutions/, other submissions or the score file; memory/process/file limits
    outside verdicts the checks run in a judge process of the grader's (moe_lab/grading/judge.py);
                     the student's functions are called in the kernel on the grader's inputs and
                     return plain data, compared with references the grader computes itself
    a judge process  one per submission: a submission that crashes or hangs its judge loses its own
                     score, never the run's; each result is recorded as soon as it is known

    grade cell passed                       -> its points
    failed / timed out / used the library   -> 0, with the check's own message
    kernel died                             -> 0 for that part and every part after it
    written answer (markdown, by hand)      -> "needs manual grading": no points yet, counted in
                                               `by_hand`; "not answered" (only the stub): 0

    python -m moe_lab grade submissions/ --out scores.csv [--jobs 2] [--memory 4G]
    python -m moe_lab make-exercises [--check]
"""
from __future__ import annotations

import concurrent.futures
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..paths import PACKAGE_DIR, repo_root
from . import generate as gen
from .report import MANUAL, UNANSWERED, Part, Result, _num, format_table, write_csv
from .sandbox import why_no_sandbox

DEFAULT_CELL_TIMEOUT = 60.0
DEFAULT_NOTEBOOK_TIMEOUT = 600.0
DEFAULT_MEMORY = 4 << 30
_REPO = repo_root() or Path.cwd()


class SandboxRefused(RuntimeError):
    """No sandbox here and no --unsafe: grading refuses (the message says why)."""


# --- inputs ---------------------------------------------------------------------------------------


def _positive(name: str, value, whole: bool = False):
    """A finite number > 0 (an int when `whole`), else a ValueError naming the option."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if ok and whole and int(value) != value:
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r}: must be a {'whole ' if whole else ''}number > 0")
    return int(value) if whole else float(value)


def parse_memory(text) -> int:
    """'4G', '512M', '2.5G' or a number of bytes -> bytes (ValueError for 0, negatives, nan)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(_positive("memory", text))
    m = re.fullmatch(r"\s*([0-9.eE+-]+|nan|inf)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not m:
        raise ValueError(f"memory={text!r}: give bytes or a size like 4G or 512M")
    try:
        number = float(m.group(1))
    except ValueError:
        raise ValueError(f"memory={text!r}: give bytes or a size like 4G or 512M") from None
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    value = _positive("memory", number) * scale
    if value < 256 << 20:
        raise ValueError(f"memory={text!r}: a kernel needs at least 256M to import torch")
    return int(value)


def find_notebooks(paths) -> tuple[list[Path], list[str], int]:
    """(notebooks, missing paths, notebooks skipped in folders because they are not exercises).

    A notebook named directly is always graded; under a folder, only notebooks that look like
    exercises (nbgrader cells, or a file name of one) are, so a chapter notebook is skipped."""
    found, missing, skipped = [], [], 0
    for p in map(Path, paths):
        if p.is_dir():
            for q in sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts):
                if _looks_like_exercise(q):
                    found.append(q)
                else:
                    skipped += 1
        elif p.is_file():
            found.append(p)
        else:
            missing.append(f"{p}: no such notebook or folder")
    return found, missing, skipped


def _looks_like_exercise(path: Path) -> bool:
    if re.match(r"(.*[^a-z])?ex\d+", path.stem, re.IGNORECASE):
        return True
    try:
        return '"nbgrader"' in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # unreadable: grade it, so the table says why


def _read(path: Path):
    """(notebook, problem): a notebook nbformat accepts, or why it cannot be read."""
    import nbformat

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"could not read: {type(e).__name__}: {e}"[:300]
    bad = gen.problems(raw)
    if bad:
        return None, "could not read: " + "; ".join(bad[:3])
    try:
        nb = nbformat.from_dict(raw) if raw.get("nbformat", 4) >= 4 else nbformat.reads(json.dumps(raw), 4)
    except Exception as e:
        return None, f"could not read: {type(e).__name__}: {e}"[:300]
    for cell in nb.cells:  # one string per cell, as nbformat.read gives it (and the judge reads it)
        if isinstance(cell.get("source"), list):
            cell.source = "".join(cell.source)
    return nb, ""


def _which_exercise(path: Path, submission, sources: dict) -> tuple[str | None, str]:
    """(source name, note). A file named for one exercise whose cells are another's says so."""
    name = gen.match_source(path, submission, sources)
    ids = {gen.grade_id(c) for c in getattr(submission, "cells", [])} - {None}
    if name and ids:
        own = ids & {gen.grade_id(c) for c in sources[name].cells}
        other = [n for n, nb in sources.items() if n != name and ids & {gen.grade_id(c) for c in nb.cells}]
        if not own and other:
            return name, (f"this is the notebook of {other[0]}, not of {name}: "
                          f"submit it as {other[0]} (graded 0 here)")
    return name, ""


# --- grading ----------------------------------------------------------------------------------------


def _judge_one(path: Path, name: str, source_path: Path, warnings: list[str], limits: dict, scratch: Path) -> dict:
    """Run the judge for one submission in its own process; its result as plain data."""
    work = Path(tempfile.mkdtemp(prefix="judge-", dir=scratch))
    request = dict(source=str(source_path), submission=str(path.resolve()), name=name,
                   cell_timeout=limits["cell_timeout"], notebook_timeout=limits["notebook_timeout"],
                   sandbox=limits["sandbox"],
                   limits=dict(memory_bytes=limits["memory"]), workdir=str(work / "w"), warnings=warnings)
    (work / "w").mkdir()
    (work / "request.json").write_text(json.dumps(request), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_DIR.parent), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "moe_lab.grading.judge", str(work / "request.json"),
                               str(work / "result.json")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=2 * limits["notebook_timeout"] + 300,
                              start_new_session=True)
        out = json.loads((work / "result.json").read_text(encoding="utf-8"))
        if proc.returncode != 0 and "error" not in out:
            out["error"] = f"the judge exited with status {proc.returncode}"
    except subprocess.TimeoutExpired:
        out = {"parts": [], "notes": [], "error": f"ran past the notebook limit of {limits['notebook_timeout']:g} s"}
    except (OSError, ValueError) as e:
        out = {"parts": [], "notes": [], "error": f"the judge gave no result ({type(e).__name__})"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _written(source, submission, name: str) -> list[Part]:
    """The written answers, read from the submission here (no kernel needed): never scored by the grader."""
    parts = []
    try:
        written = gen.written_parts(gen.assemble(source, submission, name))
    except Exception:  # cannot tell whether it was answered: a person looks at it
        written = [(gid, pts, True) for gid, pts, _ in gen.written_parts(source)]
    for gid, pts, answered in written:
        if answered:
            parts.append(Part(gid, pts, 0.0, MANUAL, f"a written answer: its {_num(pts)} points are graded by hand"))
        else:
            parts.append(Part(gid, pts, 0.0, UNANSWERED, "the answer cell is empty (only the stub): 0 points"))
    return parts


def _result(path: Path, name: str, source, out: dict, written: list[Part] = ()) -> Result:
    parts = [Part(p["grade_id"], p["max_points"], p["points"], p["status"], p["message"]) for p in out.get("parts", [])]
    parts += [p for p in written if p.grade_id not in {q.grade_id for q in parts}]
    graded = {p.grade_id for p in parts}
    for gid, pts in gen.graded_parts(source):  # parts the judge never reached
        if gid not in graded:
            parts.append(Part(gid, pts, 0.0, "not run", out.get("error", "")))
    order = {gid: i for i, (gid, _) in enumerate(gen.graded_parts(source))}
    parts.sort(key=lambda p: order.get(p.grade_id, len(order)))
    notes = list(out.get("notes", []))
    failed = "error" in out and not out.get("parts")
    if "error" in out:
        notes.append(f"could not grade: {out['error']}")
    return Result(str(path), name, parts, note="\n".join(notes), failed=failed)


def grade(paths, solutions_dir, cell_timeout=DEFAULT_CELL_TIMEOUT, notebook_timeout=DEFAULT_NOTEBOOK_TIMEOUT,
          jobs: int = 1, memory=DEFAULT_MEMORY, unsafe: bool = False, on_result=None, report=None) -> list[Result]:
    """Grade every notebook in `paths` (files or folders) against `solutions_dir`; one Result each.

    Every setting is checked before anything runs (ValueError). Without a sandbox, and without
    `unsafe=True`, raises SandboxRefused. `on_result(result)` is called as soon as each notebook is
    graded; `report(text)` receives the run's remarks (missing paths, skipped notebooks)."""
    cell_timeout = _positive("cell_timeout", cell_timeout)
    notebook_timeout = _positive("notebook_timeout", notebook_timeout)
    jobs = _positive("jobs", jobs, whole=True)
    memory = parse_memory(memory)
    sources = gen.load_sources(solutions_dir)
    if not sources:
        raise FileNotFoundError(f"no source notebooks in {solutions_dir}")
    notebooks, missing, skipped = find_notebooks(paths)
    say = report or (lambda text: print(text, file=sys.stderr))
    for line in missing:
        say(f"grade: {line}")
    if skipped:
        say(f"grade: skipped {skipped} notebook(s) in the given folders that are not exercises")
    if not unsafe:
        why = why_no_sandbox()
        if why:
            raise SandboxRefused(f"no sandbox can be made here: {why}. Grading runs students' code; "
                                 "refusing. Pass --unsafe to grade without one (scores then cannot be trusted)")
    limits = dict(cell_timeout=cell_timeout, notebook_timeout=notebook_timeout, memory=memory, sandbox=not unsafe)
    lock = threading.Lock()
    results: list[Result | None] = [None] * len(notebooks)
    scratch = Path(tempfile.mkdtemp(prefix="moe_lab_grade_"))
    os.chmod(scratch, 0o700)

    def one(i: int, path: Path) -> None:
        submission, problem = _read(path)
        name, note = (gen.match_source(path, None, sources), "") if submission is None else \
            _which_exercise(path, submission, sources)
        if name is None:
            r = Result(str(path), None, note=problem or "not an exercise: no matching notebook in the solutions folder")
        elif submission is None or note:
            parts = [Part(gid, pts, 0.0, "not run", problem or "another exercise's notebook")
                     for gid, pts in gen.graded_parts(sources[name])]
            r = Result(str(path), name, parts, note=problem or note)
        else:
            warnings = gen.duplicated_answers(sources[name], submission)
            r = _result(path, name, sources[name],
                        _judge_one(path, name, Path(solutions_dir) / name, warnings, limits, scratch),
                        _written(sources[name], submission, name))
        with lock:
            results[i] = r
            if on_result:
                on_result(r)

    try:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for f in [pool.submit(one, i, p) for i, p in enumerate(notebooks)]:
                f.result()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [r for r in results if r is not None]


# --- command line ---------------------------------------------------------------------------------


def _default_dir(name: str) -> Path:
    """solutions/ or exercises/ of the current folder, else of the checkout this package sits in."""
    return Path(name) if Path(name).is_dir() or not (_REPO / name).is_dir() else _REPO / name


def _cmd_grade(args) -> int:
    solutions = Path(args.solutions) if args.solutions else _default_dir("solutions")
    remarks: list[str] = []
    progress = None
    if args.out:
        progress = open(f"{args.out}.progress.jsonl", "w", encoding="utf-8")

    def record(r: Result) -> None:  # kept as soon as known: a crash later loses nothing graded
        print(f"graded {r.notebook}: {_num(r.score)} / {_num(r.max_score) or '-'}", file=sys.stderr, flush=True)
        if progress:
            progress.write(json.dumps({"notebook": r.notebook, "source": r.source, "score": r.score,
                                       "parts": {p.grade_id: None if p.by_hand else p.points for p in r.parts}}) + "\n")
            progress.flush()

    def report(text: str) -> None:
        remarks.append(text)
        print(text, file=sys.stderr, flush=True)

    try:
        results = grade(args.paths, solutions, args.cell_timeout, args.timeout, args.jobs, args.memory,
                        args.unsafe, on_result=record, report=report)
    except (ValueError, SandboxRefused) as e:
        print(f"grade: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ImportError) as e:
        print(f"grade: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grade: interrupted; no scores written", file=sys.stderr)
        return 130
    finally:
        if progress:
            progress.close()
    if not results:
        print("grade: no notebooks found", file=sys.stderr)
        return 2
    print(format_table(results, unsafe=args.unsafe))
    total = sum(r.score for r in results)
    possible = sum(r.max_score or 0 for r in results)
    by_hand = sum(r.by_hand for r in results)
    print(f"{len(results)} notebook(s) graded: {_num(total)} / {_num(possible)} points"
          + (f" + {_num(by_hand)} points of written answers to grade by hand" if by_hand else ""))
    if args.out:
        write_csv(results, args.out)
        os.unlink(f"{args.out}.progress.jsonl")
        print(f"scores written to {args.out}")
    broken = [r.notebook for r in results if r.failed]
    missing = [t for t in remarks if "no such notebook" in t]
    if broken:
        print(f"grade: could not run {len(broken)} notebook(s): {', '.join(broken)}", file=sys.stderr)
    if missing:
        print(f"grade: {len(missing)} path(s) not found (the rest were graded)", file=sys.stderr)
    return 1 if broken or missing else 0


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
    g = subparsers.add_parser("grade", help="grade exercise notebooks against solutions/, each in a sandbox")
    g.add_argument("paths", nargs="+", help="submitted notebooks, or folders of them")
    g.add_argument("--out", help="write one CSV row per notebook: notebook, score, max_score, by_hand, one column per part")
    g.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, metavar="S",
                   help=f"seconds one cell may run (default {DEFAULT_CELL_TIMEOUT:g})")
    g.add_argument("--timeout", type=float, default=DEFAULT_NOTEBOOK_TIMEOUT, metavar="S",
                   help=f"seconds one whole notebook may run (default {DEFAULT_NOTEBOOK_TIMEOUT:g})")
    g.add_argument("--solutions", metavar="DIR", help="source notebooks with the hidden checks (default solutions/)")
    g.add_argument("--jobs", type=int, default=1, metavar="N", help="notebooks graded at the same time (default 1)")
    g.add_argument("--memory", default="4G", metavar="SIZE",
                   help="address space per kernel process, e.g. 4G or 512M (default 4G)")
    g.add_argument("--unsafe", action="store_true",
                   help="grade without a sandbox when none can be made (the table then carries a warning)")
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

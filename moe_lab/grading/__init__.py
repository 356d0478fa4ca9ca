"""Course tooling, apart from the library: exercise generation, the grader, its sandbox and judge.

    generate  the student copy of each exercise from its one source in solutions/
    grader    grade submitted notebooks into a score table; the `grade` / `make-exercises` commands
    judge     one submission: checks run in the grader's process, answers called in the kernel
    kernel    one sandboxed kernel: run code with limits, collect capped output
    sandbox   the bubblewrap box and its limits
    wire      plain data (JSON + .npy) between judge and kernel, never pickle
    forbid    the library functions an answer may not call
    checks    helpers for the visible checks: messages that say expected / got / a hint
    report    the score table and the CSV
    selfcheck `check_exercise()`: a student's visible checks, counted as the grader counts

Nothing in the library imports this package; `python -m moe_lab grade` does.
"""
from .grader import (DEFAULT_CELL_TIMEOUT, DEFAULT_NOTEBOOK_TIMEOUT, SandboxRefused, add_parsers, find_notebooks,
                     grade, main, parse_memory)
from .report import Part, Result, format_table, write_csv
from .selfcheck import check_exercise

__all__ = ["check_exercise", "grade", "Part", "Result", "format_table", "write_csv", "find_notebooks", "add_parsers", "main",
           "parse_memory", "SandboxRefused", "DEFAULT_CELL_TIMEOUT", "DEFAULT_NOTEBOOK_TIMEOUT"]

"""Course tooling, apart from the library: exercise generation, the grader and its kernel runner.

    generate  the student copy of each exercise from its one source in solutions/
    grader    grade submitted notebooks into a score table; the `grade` / `make-exercises` commands
    kernel    run one assembled notebook in a fresh kernel with time limits

Nothing in the library imports this package; `python -m moe_lab grade` does.
"""
from .grader import (DEFAULT_CELL_TIMEOUT, DEFAULT_NOTEBOOK_TIMEOUT, Part, Result, add_parsers, find_notebooks,
                     format_table, grade, main, write_csv)

__all__ = ["grade", "Part", "Result", "format_table", "write_csv", "find_notebooks", "add_parsers", "main",
           "DEFAULT_CELL_TIMEOUT", "DEFAULT_NOTEBOOK_TIMEOUT"]

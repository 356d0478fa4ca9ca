"""Exercise notebooks: the student copy made from its source, and a submission put back into it.

A notebook in `solutions/` is the source of one exercise. It carries nbgrader cell metadata
(`metadata.nbgrader`: grade_id, points, solution, grade, locked) and two kinds of markers:

    def capacity(num_tokens, num_experts, capacity_factor, k=1):      <- kept: the signature
        ### BEGIN SOLUTION                                              <- the student never sees
        return math.ceil(...)                                             anything between these
        ### END SOLUTION

    assert capacity(512, 8, 1.25) == 80                                <- visible check, kept
    ### BEGIN HIDDEN TESTS                                             <- removed from the
    assert capacity(500, 10, 1.1, k=2) == 110                             student copy, run
    ### END HIDDEN TESTS                                                  at grading time

The student copy in `exercises/` replaces each solution block by a stub that raises
`NotImplementedError` (indented like the block, so it sits inside the function), removes the
hidden tests, and clears outputs. Output is byte-for-byte deterministic, so `--check` can tell
when `exercises/` has drifted from `solutions/`.

A markdown cell that is both a solution and a grade cell is a *written answer* (nbgrader's "manually
graded answer"): its solution block holds the model answer and the rubric, the student copy holds
"YOUR ANSWER HERE", and the grader reports it as "needs manual grading" (or "not answered", 0 points,
when the cell still holds only the stub) instead of scoring it.

A solution cell may start with a cell magic, `%%writefile student_dispatch.py`: an exercise whose
code must run on the ranks of a Cluster, which import functions by module name. The magic line stays
in the student copy, so the student's cell writes the same module; `python_source` gives the cell's
Python for anything that parses it.

The way back, for grading: `assemble` takes the source again and puts only the student's answers
(their solution cells) into it, so the checks that run are always the source's, hidden ones included.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
# Jupyter's "Run All" carries on past a cell with this tag, so a student sees every failing check.
RUN_ALL_TAG = "raises-exception"
_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+(\w+)\s*\(")
_TOP_LEVEL_DEF = re.compile(r"^(?:async\s+def|def|class)\s+(\w+)", re.MULTILINE)
_CELL_MAGIC = re.compile(r"^\s*%%\w+")
TEXT_STUB = "YOUR ANSWER HERE"  # what the student copy of a written answer holds (nbgrader's text stub)


def nbgrader_meta(cell) -> dict:
    """The cell's nbgrader metadata, or {} when it has none."""
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


def is_solution_cell(cell) -> bool:
    return bool(nbgrader_meta(cell).get("solution"))


def is_grade_cell(cell) -> bool:
    return bool(nbgrader_meta(cell).get("grade"))


def is_written_cell(cell) -> bool:
    """A written answer, graded by hand: a markdown cell that is both a solution and a grade cell
    (nbgrader's "manually graded answer"). The grader reports it, it never scores it."""
    return cell.get("cell_type") == "markdown" and is_solution_cell(cell) and is_grade_cell(cell)


def is_answered(text: str) -> bool:
    """Whether a written answer cell holds an answer: anything but the blank stub. An untouched cell
    scores 0 at once, as nbgrader does for an answer whose checksum is unchanged."""
    return bool(text.replace(TEXT_STUB, "").strip())


def grade_id(cell) -> str | None:
    gid = nbgrader_meta(cell).get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def python_source(source: str) -> str:
    """The Python of a code cell: a first line holding a cell magic (`%%writefile module.py`, whose
    body is Python) becomes a comment, so the rest parses and keeps its line numbers."""
    first, sep, rest = source.partition("\n")
    return f"# {first}{sep}{rest}" if _CELL_MAGIC.match(first) else source


def graded_parts(nb) -> list[tuple[str, float]]:
    """(grade_id, points) of every grade cell, in notebook order: the parts a notebook is scored on
    (written answers included: their points count in the exercise's total, graded by hand)."""
    return [(grade_id(c), float(nbgrader_meta(c).get("points", 0))) for c in nb.cells if is_grade_cell(c)]


def written_parts(graded) -> list[tuple[str, float, bool]]:
    """(grade_id, points, answered) of every written answer of an assembled notebook (`assemble`)."""
    return [(grade_id(c), float(nbgrader_meta(c).get("points", 0)), is_answered(c.source))
            for c in graded.cells if is_written_cell(c)]


def _blocks(lines: list[str], begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """(first, last) line numbers of each begin/end marker pair; unbalanced markers raise."""
    blocks, start = [], None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == begin:
            if start is not None:
                raise ValueError(f"{where}: '{begin}' on line {i + 1} before the previous block was closed")
            start = i
        elif text == end:
            if start is None:
                raise ValueError(f"{where}: '{end}' on line {i + 1} has no matching '{begin}'")
            blocks.append((start, i))
            start = None
    if start is not None:
        raise ValueError(f"{where}: '{begin}' on line {start + 1} is never closed with '{end}'")
    return blocks


def _enclosing_function(lines: list[str], line_no: int, indent: str) -> str | None:
    """Name of the nearest `def` above `line_no` that is indented less than the block."""
    for line in reversed(lines[:line_no]):
        m = _DEF.match(line)
        if m and len(m.group(1)) < len(indent):
            return m.group(2)
    return None


def stub_solution(source: str, cell_type: str = "code", where: str = "cell") -> str:
    """The student's version of a solution cell: every solution block becomes a stub.

    Code: `raise NotImplementedError(...)` at the block's indentation, so the lines around the
    block (the signature, the docstring) stay and the stub sits inside the function. Markdown:
    "YOUR ANSWER HERE". A solution cell without markers is replaced as a whole (as nbgrader does).
    """
    lines = source.splitlines()
    blocks = _blocks(lines, BEGIN_SOLUTION, END_SOLUTION, where)
    if not blocks:  # no markers: the whole cell is the answer
        lines = [BEGIN_SOLUTION, *lines, END_SOLUTION]
        blocks = [(0, len(lines) - 1)]
    out, prev = [], 0
    for first, last in blocks:
        out += lines[prev:first]
        indent = re.match(r"\s*", lines[first]).group(0)
        if cell_type == "code":
            name = _enclosing_function(lines, first, indent)
            what = f"write the body of {name}()" if name else "write your solution"
            out += [f"{indent}# YOUR CODE HERE", f'{indent}raise NotImplementedError("{what}")']
        else:
            out.append(TEXT_STUB)
        prev = last + 1
    out += lines[prev:]
    return "\n".join(out).strip("\n")


def strip_hidden_tests(source: str, where: str = "cell") -> str:
    """The cell without its hidden-test blocks (markers included)."""
    lines = source.splitlines()
    keep = [True] * len(lines)
    for first, last in _blocks(lines, BEGIN_HIDDEN, END_HIDDEN, where):
        keep[first : last + 1] = [False] * (last + 1 - first)
    return "\n".join(line for line, k in zip(lines, keep) if k).rstrip()


def check_source(nb, name: str = "notebook") -> None:
    """Raise ValueError, naming the cell, when a source notebook would make a broken exercise."""
    seen = set()
    for i, cell in enumerate(nb.cells):
        where = f"{name} cell {i}"
        meta = nbgrader_meta(cell)
        src = cell.get("source", "")
        solution_blocks = _blocks(src.splitlines(), BEGIN_SOLUTION, END_SOLUTION, where)
        hidden_blocks = _blocks(src.splitlines(), BEGIN_HIDDEN, END_HIDDEN, where)
        if meta:
            gid = grade_id(cell)
            if gid is None:
                raise ValueError(f"{where}: nbgrader metadata without a grade_id")
            if gid in seen:
                raise ValueError(f"{where}: grade_id {gid!r} is used twice; grade_ids must be unique")
            seen.add(gid)
        if solution_blocks and not is_solution_cell(cell):
            raise ValueError(f"{where}: has '{BEGIN_SOLUTION}' but its nbgrader metadata does not say solution=true")
        if hidden_blocks and not is_grade_cell(cell):
            raise ValueError(f"{where}: has '{BEGIN_HIDDEN}' but is not a grade cell (nbgrader grade=true)")
        if is_grade_cell(cell):
            if cell.cell_type not in ("code", "markdown"):
                raise ValueError(f"{where}: a grade cell must be a code cell (or a markdown written answer)")
            points = meta.get("points")
            if isinstance(points, bool) or not isinstance(points, (int, float)) or points <= 0:
                raise ValueError(f"{where}: grade cell {grade_id(cell)!r} needs points > 0, got {points!r}")
            if cell.cell_type == "code" and is_solution_cell(cell):
                raise ValueError(f"{where}: a code cell cannot be both a solution and a grade cell here "
                                 "(only a markdown cell can: a written answer, graded by hand)")
            if cell.cell_type == "markdown" and not is_solution_cell(cell):
                raise ValueError(f"{where}: a markdown grade cell must also be a solution cell (a written answer)")
            if cell.cell_type == "markdown" and meta.get("locked"):
                raise ValueError(f"{where}: a written answer cell must not be locked (the student writes in it)")
            if cell.cell_type == "markdown" and stub_solution(src, "markdown", where) != TEXT_STUB:
                raise ValueError(f"{where}: a written answer cell holds only its solution block (put the question "
                                 "in a cell above): the student copy must be the bare stub, so an untouched one is told apart")


def make_exercise(nb, name: str = "notebook"):
    """The student copy of a source notebook (a new notebook; the source is not changed)."""
    check_source(nb, name)
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for i, cell in enumerate(nb.cells):
        where = f"{name} cell {i}"
        cell.metadata.pop("execution", None)
        if "id" not in cell:
            cell["id"] = f"cell-{i}"  # deterministic, unlike nbformat's random ids
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        if is_solution_cell(cell):
            cell.source = stub_solution(cell.source, cell.cell_type, where)
        cell.source = strip_hidden_tests(cell.source, where)
        if is_grade_cell(cell) and cell.cell_type == "code":
            tags = list(cell.metadata.get("tags", []))
            if RUN_ALL_TAG not in tags:
                cell.metadata["tags"] = tags + [RUN_ALL_TAG]
    return nb


def _nbformat():
    try:
        import nbformat
    except ImportError as e:  # a test/course dependency, not needed to import moe_lab
        raise ImportError("exercises need nbformat and nbclient: pip install nbformat nbclient ipykernel") from e
    return nbformat


def read_notebook(path):
    return _nbformat().read(str(path), as_version=4)


def notebook_text(nb) -> str:
    """Stable JSON text of a notebook (nbformat's own formatting), ending in a newline."""
    text = _nbformat().writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def exercise_text(solution_path) -> str:
    path = Path(solution_path)
    return notebook_text(make_exercise(read_notebook(path), path.name))


def source_notebooks(solutions_dir) -> list[Path]:
    """The exercise sources: every notebook directly in solutions/, sorted by name."""
    return sorted(p for p in Path(solutions_dir).glob("*.ipynb") if p.is_file())


def sync_exercises(solutions_dir, exercises_dir, check: bool = False) -> list[str]:
    """Bring exercises/ in step with solutions/ (or, with check=True, only report).

    Returns one line per file that differs, is missing or has no source; [] means in step.
    Without `check` those files are rewritten (or removed, for a stale exercise).
    """
    solutions_dir, exercises_dir = Path(solutions_dir), Path(exercises_dir)
    sources = source_notebooks(solutions_dir)
    if not sources:
        raise FileNotFoundError(f"no notebooks in {solutions_dir}: nothing to generate exercises from")
    problems = []
    for src in sources:
        target = exercises_dir / src.name
        text = exercise_text(src)
        if not target.exists():
            problems.append(f"{target}: missing (generated from {src})")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{target}: differs from what {src} generates")
        else:
            continue
        if not check:
            exercises_dir.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    names = {src.name for src in sources}
    for stale in sorted(exercises_dir.glob("*.ipynb")):
        if stale.name not in names:
            problems.append(f"{stale}: has no source in {solutions_dir}")
            if not check:
                stale.unlink()
    return problems


# --- a submission back into its source (for grading) ----------------------------------------------


def load_sources(solutions_dir) -> dict[str, object]:
    return {p.name: read_notebook(p) for p in source_notebooks(solutions_dir)}


def match_source(path: Path, submission, sources: dict) -> str | None:
    """The source a submission belongs to: same file name, else most shared grade_ids, else the
    source whose name appears in the submission's (e.g. 'alice_ex1_top_k_gating.ipynb')."""
    if path.name in sources:
        return path.name
    ids = {grade_id(c) for c in getattr(submission, "cells", [])} - {None}
    overlap = {name: len(ids & {grade_id(c) for c in nb.cells}) for name, nb in sources.items()}
    best = max(overlap.values(), default=0)
    if best and list(overlap.values()).count(best) == 1:
        return max(overlap, key=overlap.get)
    named = [name for name in sources if Path(name).stem in path.stem]
    return max(named, key=len) if named else None


def _defined_names(source: str) -> set[str]:
    return set(_TOP_LEVEL_DEF.findall(source))


def _find_answer(src_cell, index: int, source, submission, used: set) -> int | None:
    """Index of the submission cell that holds the student's answer for one solution cell.

    By grade_id (the LAST copy: Jupyter's copy/paste keeps the metadata, and running the notebook
    leaves the last copy's definition in force); else by cell id (kept when a student deletes the
    nbgrader metadata); else the last code cell defining the same function; else the same position
    when the cell count is unchanged.
    """
    cells = submission.cells
    gid = grade_id(src_cell)
    free = [j for j in range(len(cells)) if j not in used and grade_id(cells[j]) in (None, gid)]
    for j in reversed(free):
        if grade_id(cells[j]) == gid:
            return j
    for j in free:
        if src_cell.get("id") and cells[j].get("id") == src_cell.get("id"):
            return j
    names = _defined_names(src_cell.source)
    if names:
        same = [j for j in free if cells[j].cell_type == "code" and names & _defined_names(cells[j].source)]
        if same:
            return same[-1]
    if len(cells) == len(source.cells) and index in free and cells[index].cell_type == src_cell.cell_type:
        return index
    return None


def problems(submission) -> list[str]:
    """Why a notebook cannot be graded as read (a cell without "source", an unknown cell type)."""
    found = []
    cells = submission.get("cells") if isinstance(submission, dict) else None
    if not isinstance(cells, list):
        return ["it has no list of cells"]
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict):
            found.append(f"cell {i} is not a cell")
        elif not isinstance(cell.get("source"), (str, list)):
            found.append(f'cell {i} has no "source"')
        elif cell.get("cell_type") not in ("code", "markdown", "raw"):
            found.append(f"cell {i} has cell_type {cell.get('cell_type')!r}")
    return found


def duplicated_answers(source, submission) -> list[str]:
    """One warning per answer cell that appears more than once (same grade_id): the last is graded."""
    ids = [grade_id(c) for c in submission.cells if is_solution_cell(c)]
    wanted = {grade_id(c) for c in source.cells if is_solution_cell(c)}
    return [f"answer cell {gid!r} appears {ids.count(gid)} times: the last copy is graded"
            for gid in sorted(set(ids) & wanted) if ids.count(gid) > 1]


def assemble(source, submission, name: str = "notebook"):
    """The notebook that is graded: the source, with the submission's answers in its solution cells.

    An answer that cannot be found is graded as the untouched stub.
    """
    check_source(source, name)
    graded = copy.deepcopy(source)
    used: set[int] = set()
    for i, cell in enumerate(graded.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if is_solution_cell(cell):
            j = _find_answer(cell, i, source, submission, used)
            if j is None:
                cell.source = stub_solution(cell.source, cell.cell_type, f"{name} cell {i}")
            else:
                used.add(j)
                cell.source = submission.cells[j].source
    return graded

"""What a grading run reports: per notebook, each graded part's points and verdict; a table and a CSV.

A written answer (a part graded by hand) is never scored here: its status is "needs manual grading"
(its points are left for a person, listed as `by_hand`) or "not answered" (the cell holds only the
stub: 0 points, nothing to grade). `max_score` is always the exercise's whole worth, so a solved
notebook with a written part reads "5 / 9 + 4 points graded by hand".

The CSV is written to a temporary file beside its target and renamed over it at the end, so a
reader (or a crash half-way) never sees half a score file.
"""
from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MANUAL, UNANSWERED = "needs manual grading", "not answered"


@dataclass
class Part:
    grade_id: str
    max_points: float
    points: float = 0.0
    status: str = "not run"  # passed | failed | timed out | kernel died | not run | needs manual grading | not answered
    message: str = ""

    @property
    def by_hand(self) -> bool:
        """Points a person still has to give (a written answer): neither earned nor lost yet."""
        return self.status == MANUAL


@dataclass
class Result:
    notebook: str
    source: str | None
    parts: list[Part] = field(default_factory=list)
    note: str = ""  # one line per remark, joined by newlines (could not read, duplicated answer, ...)
    failed: bool = False  # the grader itself could not run it (no kernel): not the student's fault

    @property
    def score(self) -> float:
        return sum(p.points for p in self.parts)

    @property
    def max_score(self) -> float | None:
        return sum(p.max_points for p in self.parts) if self.source else None

    @property
    def by_hand(self) -> float:
        """Points of the written answers that wait for a person (not in `score`, in `max_score`)."""
        return sum(p.max_points for p in self.parts if p.by_hand)


def _num(x) -> str:
    return "" if x is None else (f"{x:g}" if x != int(x) else str(int(x)))


def verdict(p: Part) -> str:
    """`failed: AssertionError: ...`; a message that already says the status is not repeated."""
    if not p.message:
        return p.status
    return p.message if p.message.startswith(p.status) else f"{p.status}: {p.message}"


def format_table(results: list[Result], unsafe: bool = False) -> str:
    """One block per notebook: each graded part with its points and verdict, then the total."""
    lines = []
    if unsafe:
        lines += ["WARNING: graded with --unsafe: submissions ran WITHOUT a sandbox, as this user, with this",
                  "user's files, network and processes in reach; their scores cannot be trusted.", ""]
    for r in results:
        lines.append(f"{r.notebook}" + (f"  ({r.source})" if r.source and Path(r.notebook).name != r.source else ""))
        width = max([len(p.grade_id) for p in r.parts] + [5])
        for p in r.parts:
            got = "-" if p.by_hand else _num(p.points)
            lines.append(f"  {p.grade_id:<{width}}  {got:>3} / {_num(p.max_points):<3}  {verdict(p)}")
        for line in filter(None, r.note.splitlines()):
            lines.append(f"  note: {line}")
        hand = f"  + {_num(r.by_hand)} points graded by hand" if r.by_hand else ""
        lines.append(f"  {'total':<{width}}  {_num(r.score):>3} / {_num(r.max_score) or '-':<3}{hand}".rstrip())
        lines.append("")
    return "\n".join(lines)


def write_csv(results: list[Result], path) -> list[str]:
    """notebook, score, max_score, by_hand, then one column per graded part: the union over the
    notebooks, ordered by exercise and then by position in the exercise (so ex1's parts come first).
    `by_hand` is the points that wait for a person; a written part waiting for one is left empty."""
    order: dict[str, tuple] = {}
    for r in results:
        for i, p in enumerate(r.parts):
            order.setdefault(p.grade_id, (r.source or "", i))
    part_ids = sorted(order, key=order.get)
    columns = ["notebook", "score", "max_score", "by_hand", *part_ids]
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in results:
            earned = {p.grade_id: "" if p.by_hand else _num(p.points) for p in r.parts}
            w.writerow([r.notebook, _num(r.score), _num(r.max_score), _num(r.by_hand) if r.source else "",
                        *(earned.get(g, "") for g in part_ids)])
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return columns



"""Grading one submission: checks run in the grader's process, the student's code in its sandbox.

The source notebook is walked cell by cell, in order, on two sides:

    setup / demo cell   runs in the kernel (the student's code may need it) AND here, from the
                        source, so every name the checks use is the grader's own value
    answer cell         the student's cell runs in the kernel only; here each name the task asks
                        for (`top_k_gating`, the module `student_dispatch`) becomes a `Remote`
    grade cell          runs here only, visible and hidden checks together, with `Remote`s in place
                        of the student's names

Calling a `Remote` sends the call to the kernel as plain data (moe_lab/grading/wire.py) and returns
what the student's function returned, as plain data. So the assert-style checks written for
nbgrader run unchanged, but the `assert`, `torch.allclose`, the references (`routing.top_k_gating`)
and the random inputs are all the grader's: a kernel that patches torch, deletes asserts, or returns
an object whose `__eq__` is always true changes nothing here. A `Cluster` that a setup cell leaves
running (exercise 6) is the kernel's, reached through a `Remote` too, so the student's code runs on
ranks inside the sandbox.

Run as `python -m moe_lab.grading.judge request.json result.json`, one process per submission (the
grader's own process keeps nothing a submission touched).
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path

from . import forbid
from . import generate as gen
from .kernel import Kernel, Run
from .remote import AnswerFailed, KernelGone, Remote, _join_grad, _replace
from .sandbox import SCRATCH, Limits
from .wire import Decoder, Encoder, WireError, config_fields, read_json, write_json

_WRITEFILE = re.compile(r"^\s*%%writefile\s+(?:-a\s+)?(\S+)")


def _lazy_clusters() -> None:
    """Here a setup cell's `Cluster(...)` starts nothing until it is used: one left unused at the
    end of its cell is the kernel's cluster, reached through a Remote (exercise 6)."""
    from moe_lab import cluster as cl

    if getattr(cl.Cluster, "_judge_lazy", False):
        return
    real_init, real_run, real_step = cl.Cluster.__init__, cl.Cluster.run, cl.Cluster.step

    def __init__(self, *args, start=True, **kwargs):
        real_init(self, *args, start=False, **kwargs)
        self._pending = start

    def _wake(self):
        if getattr(self, "_pending", False):
            self._pending = False
            self.start()

    def run(self, *args, **kwargs):
        _wake(self)
        return real_run(self, *args, **kwargs)

    def step(self, *args, **kwargs):
        _wake(self)
        return real_step(self, *args, **kwargs)

    real_enter = cl.Cluster.__enter__

    def __enter__(self):
        _wake(self)
        return real_enter(self)

    cl.Cluster.__init__, cl.Cluster.run, cl.Cluster.step, cl.Cluster.__enter__ = __init__, run, step, __enter__
    cl.Cluster._judge_lazy = True


class Judge:
    def __init__(self, source, submission, name: str, kernel: Kernel, cell_timeout: float, workdir: Path,
                 notebook_timeout: float = float("inf")):
        self.source, self.name, self.kernel = source, name, kernel
        self.cell_timeout, self.workdir = cell_timeout, workdir
        self.notebook_timeout = notebook_timeout
        self.notebook_deadline = time.monotonic() + notebook_timeout  # the kernel has started: the clock runs
        self.graded = gen.assemble(source, submission, name)
        self.forbidden = forbid.forbidden_names(source)
        self.ns: dict = {"__name__": "__main__"}
        self.student_modules: set[str] = set()
        self.deadline = 0.0
        self.calls = 0
        self.notes: list[str] = []

    # --- the kernel side of a call ------------------------------------------------------------------

    def _ref(self, x):
        from moe_lab.config import MoEConfig

        if isinstance(x, Remote):
            return x._ref()
        if isinstance(x, MoEConfig):
            return {"config": Encoder(self._folder)(config_fields(x))}
        module, qual = getattr(x, "__module__", None), getattr(x, "__qualname__", "")
        if callable(x) and module and module not in ("__main__", "builtins") and "<" not in qual:
            return {"ref": f"{module}:{qual}"}
        return None

    def call(self, remote: Remote, args, kwargs):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise AnswerFailed(f"timed out: the cell's {self.cell_timeout:g} s were used up")
        self.calls += 1
        folder = self.kernel.scratch / ".calls" / str(self.calls)
        folder.mkdir(parents=True)
        self._folder = folder
        enc = Encoder(folder, refs=self._ref)
        request = {"kind": "call", "call": self.calls, "target": remote._ref(), "args": enc(list(args)),
                   "kwargs": enc(dict(kwargs))}
        value, outputs, meta = self._ask(folder, request, left, remote._label())
        grad_out = [i for i, m in enumerate(meta) if m]
        if not any(t.requires_grad for t in enc.tensors) or not grad_out:
            return value
        joined = _join_grad(self, self.calls, enc.tensors, outputs, grad_out)
        swap = {id(outputs[i]): t for i, t in zip(grad_out, joined)}
        return _replace(value, swap)

    def vjp(self, call_id: int, n_out: int, grads: dict):
        folder = self.kernel.scratch / ".calls" / f"{call_id}-grad-{time.monotonic_ns()}"
        folder.mkdir(parents=True)
        enc = Encoder(folder)
        request = {"kind": "vjp", "call": call_id, "grads": enc([grads.get(i) for i in range(n_out)])}
        value, _, _ = self._ask(folder, request, max(self.deadline - time.monotonic(), 1.0), "backward")
        return value

    def _ask(self, folder: Path, request: dict, timeout: float, label: str):
        write_json(folder / "call.json", request)
        inside = f"{SCRATCH}/.calls/{folder.name}" if self.kernel.sandbox else str(folder)
        run = self.kernel.execute(f"__import__('moe_lab.grading.wire', fromlist=['serve']).serve({inside!r})", timeout)
        if run.status == "dead":
            raise KernelGone(f"the kernel died while running {label} ({run.message})")
        if run.status == "timeout":
            raise AnswerFailed(f"{label} {run.message}")
        try:
            answer = read_json(folder / "result.json")
            if "error" in answer:
                raise AnswerFailed(f"{label} raised {answer['error']}")
            dec = Decoder(folder)
            value = dec(answer["ok"])
        except (WireError, KeyError, TypeError, ValueError) as e:
            raise AnswerFailed(f"{label} did not return plain data: {e}") from None
        finally:
            for f in folder.iterdir():
                f.unlink()
        return value, dec.tensors, [t.requires_grad for t in dec.tensors]

    # --- the grader side of the notebook ---------------------------------------------------------------

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.split(".")[0] in self.student_modules:
            return Remote(self, name)
        return builtins.__import__(name, globals, locals, fromlist, level)

    def _exec_here(self, source: str, where: str) -> None:
        """Run trusted source code here; a `%%writefile` cell writes its file into the judge's folder."""
        m = _WRITEFILE.match(source.partition("\n")[0])
        if m:
            path = self.workdir / Path(m.group(1)).name
            path.write_text(source.partition("\n")[2], encoding="utf-8")
            return
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        code = compile("\n".join(lines), where, "exec")
        exec(code, self.ns)

    def _bind_remotes(self, cell) -> None:
        """The names a solution cell defines (per the source) are the kernel's from now on."""
        m = _WRITEFILE.match(cell.source.partition("\n")[0])
        if m:
            self.student_modules.add(Path(m.group(1)).stem)
            return
        try:
            tree = ast.parse(gen.python_source(cell.source))
        except SyntaxError:
            return
        for node in tree.body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            for n in names:
                self.ns[n] = Remote(self, n)

    def _adopt_clusters(self) -> None:
        from moe_lab.cluster import Cluster

        for key, value in list(self.ns.items()):
            if isinstance(value, Cluster) and getattr(value, "_pending", False):
                self.ns[key] = Remote(self, key)

    def run(self) -> dict:
        """Walk the notebook; return {"parts": [...], "notes": [...]} as plain data."""
        _lazy_clusters()
        os.chdir(self.workdir)
        sys.path.insert(0, str(self.workdir))
        self.ns["__builtins__"] = dict(vars(builtins), __import__=self._import)
        parts, dead, armed = [], "", False
        context = []  # the source cells that ran before an answer: their imports resolve its names
        answers = {}  # name an answer cell defines -> the forbidden names that cell uses
        for i, cell in enumerate(self.graded.cells):
            if cell.cell_type != "code":
                continue
            src = cell.get("source", "")
            if not dead and not self.kernel.alive():
                dead = "the kernel died in an earlier cell"
            if gen.is_grade_cell(cell):
                parts.append(self._grade(cell, dead, answers))
                continue
            if gen.is_solution_cell(cell):
                if self.forbidden and not armed and not dead:
                    self._kernel(forbid.tripwire_code(self.forbidden))
                    armed = True
                used = forbid.static_uses(src, context, self.forbidden)
                self._bind_remotes(self.source.cells[i])
                for n in self._defined(self.source.cells[i]):
                    answers[n] = used
                if not dead:
                    r = self._kernel(src)
                    if r.status not in ("ok", "dead"):
                        self.notes.append(f"your answer cell {i}: {r.status}: {r.message}")
                continue
            if "check_exercise(" in src:  # the student's self-check: nothing to grade, nothing to set up
                continue
            context.append(src)
            if not dead:
                self._kernel(src)
            try:
                with _quiet():
                    self._exec_here(src, f"<{self.name} cell {i}>")
            except (AnswerFailed, KernelGone):  # a demo cell that uses the student's answers
                pass
            except Exception as e:
                self.notes.append(f"grader: cell {i} of the source failed here: {type(e).__name__}: {e}"[:300])
            self._adopt_clusters()
        return {"parts": parts, "notes": self.notes}

    def _defined(self, cell) -> list[str]:
        m = _WRITEFILE.match(cell.source.partition("\n")[0])
        if m:
            return [Path(m.group(1)).stem]
        try:
            tree = ast.parse(gen.python_source(cell.source))
        except SyntaxError:
            return []
        return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]

    def _left(self) -> float:
        return min(self.cell_timeout, self.notebook_deadline - time.monotonic())

    def _kernel(self, code: str) -> Run:
        if self._left() <= 0:
            return Run("timeout", "not run: the notebook's time limit was reached")
        return self.kernel.execute(code, self._left())

    def _grade(self, cell, dead: str, answers: dict) -> dict:
        gid = gen.grade_id(cell)
        points = float(gen.nbgrader_meta(cell).get("points", 0))
        part = {"grade_id": gid, "max_points": points, "points": 0.0, "status": "failed", "message": ""}
        if dead:
            part.update(status="not run", message=dead)
            return part
        if not self.kernel.alive():
            part.update(status="not run", message="the kernel died in an earlier cell")
            return part
        if self.notebook_deadline - time.monotonic() <= 0:
            part.update(status="not run", message=f"the notebook ran past its limit of {self.notebook_timeout:g} s")
            return part
        try:
            tree = ast.parse(gen.python_source(cell.source))
        except SyntaxError as e:
            part["message"] = f"grader: the check does not parse: {e}"
            return part
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        for answer, used in answers.items():
            if used and answer in names:
                part["message"] = f"{answer}: " + "; ".join(forbid.MESSAGE.format(name=u) for u in used)
                part["status"] = "failed"
                return part
        self.deadline = time.monotonic() + self._left()
        try:
            with _quiet():
                exec(compile(gen.python_source(cell.source), f"<{gid}>", "exec"), self.ns)
        except KernelGone as e:
            part.update(status="kernel died", message=str(e))
            return part
        except AnswerFailed as e:
            part.update(status="timed out" if " timed out" in str(e) else "failed", message=str(e)[:500])
            return part
        except AssertionError as e:
            part["message"] = ("AssertionError: " + str(e)).strip().splitlines()[0][:500] if str(e) else \
                "AssertionError (a check failed)"
            return part
        except Exception as e:
            part["message"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            return part
        part.update(points=points, status="passed")
        return part


def main(argv=None) -> int:
    """request.json: {source, submission, name, cell_timeout, sandbox, limits}; writes result.json."""
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result_path = Path(argv[1])
    workdir = Path(request["workdir"])
    result: dict = {"parts": [], "notes": []}
    kernel = None
    try:
        source = gen.read_notebook(request["source"])
        submission = gen.read_notebook(request["submission"])
        for w in request.get("warnings", []):
            result["notes"].append(w)
        kernel = Kernel(sandbox=request["sandbox"], limits=Limits(**request["limits"]))
        judge = Judge(source, submission, request["name"], kernel, request["cell_timeout"], workdir,
                      request.get("notebook_timeout", float("inf")))
        out = judge.run()
        result["parts"], result["notes"] = out["parts"], result["notes"] + out["notes"]
    except Exception as e:  # the grader could not run it: not the student's fault
        result["error"] = f"{type(e).__name__}: {e}"[:500]
    finally:
        if kernel is not None:
            kernel.close()
    write_json(result_path, result)
    return 0


def _die_with_parent() -> None:
    """A judge whose grader died exits (its box goes with it: bwrap --die-with-parent)."""
    import threading

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def _quiet():
    """What the checks print here is not shown (nor kept: a check's own prints are small)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


if __name__ == "__main__":
    sys.exit(main())

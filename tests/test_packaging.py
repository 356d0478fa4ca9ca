"""The two environment descriptions agree, and CI runs what the README tells people to run."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
CI_RUN = REPO / ".ci" / "run"


# --------------------------------------------------------------------------- helpers


def dist_name(requirement: str) -> str:
    """'Plotly>=6' -> 'plotly', 'pytest_timeout' -> 'pytest-timeout' (PEP 503 normalisation)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert name, f"cannot read a distribution name from {requirement!r}"
    return re.sub(r"[-_.]+", "-", name.group(1)).lower()


def env_yml_pip_requirements(text: str) -> list[str]:
    """The entries of the `- pip:` list in a simple environment.yml.

    Understands the subset this repository writes: a `dependencies:` list whose `- pip:` entry
    holds a nested list of requirement strings; `#` comments and blank lines are ignored.
    """
    entries: list[str] = []
    pip_indent = None  # indentation of the "- pip:" line while inside its list
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if pip_indent is not None and indent <= pip_indent:
            pip_indent = None  # the pip list ended
        if item in ("- pip:", "-pip:"):
            pip_indent = indent
            continue
        if pip_indent is not None:
            assert item.startswith("- "), f"unexpected line in the pip list: {raw!r}"
            entries.append(item[2:].strip().strip("'\""))
    return entries


def env_yml_conda_packages(text: str) -> list[str]:
    """Top-level entries of `dependencies:` (conda packages), e.g. ['python=3.11', 'pip']."""
    packages, inside = [], False
    for raw in text.splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        if not raw.startswith((" ", "-")):
            inside = raw.startswith("dependencies:")
            continue
        if inside and raw.startswith("  - ") and not raw.strip().endswith(":"):
            packages.append(raw.strip()[2:].strip())
    return packages


def fenced_blocks(markdown: str) -> list[list[str]]:
    """Command lines of every fenced code block (comments, blanks and '$ ' prompts removed)."""
    blocks = []
    for body in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S):
        lines = [ln.strip().removeprefix("$ ") for ln in body.splitlines()]
        blocks.append([ln for ln in lines if ln and not ln.startswith("#")])
    return blocks


def readme_test_command() -> list[str]:
    """The first README code block that runs the tests."""
    for block in fenced_blocks((REPO / "README.md").read_text()):
        if any(re.search(r"\btest\b|pytest", ln) for ln in block):
            return block
    pytest.fail("README.md has no code block with a test command")


def script_commands(path: Path) -> list[str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


# --------------------------------------------------------------------------- environments


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_environment_yml_lists_the_runtime_and_test_dependencies(pyproject):
    project = pyproject["project"]
    declared = {dist_name(r) for r in project["dependencies"]}
    declared |= {dist_name(r) for r in project["optional-dependencies"]["test"]}
    declared |= {dist_name(r) for r in project["optional-dependencies"].get("nbgrader", [])}  # make test installs it

    text = (REPO / "environment.yml").read_text()
    pip_entries = env_yml_pip_requirements(text)
    editable = [e for e in pip_entries if e.startswith("-e")]
    listed = {dist_name(e) for e in pip_entries if not e.startswith("-")}

    assert listed == declared, (
        f"only in environment.yml: {sorted(listed - declared)}; "
        f"only in pyproject.toml: {sorted(declared - listed)}"
    )
    assert editable == ["-e ."], "environment.yml should install the package itself with '-e .'"


def test_environment_yml_python_meets_requires_python(pyproject):
    conda = env_yml_conda_packages((REPO / "environment.yml").read_text())
    pythons = [p for p in conda if dist_name(p) == "python"]
    assert len(pythons) == 1, conda
    env_version = tuple(int(x) for x in re.findall(r"\d+", pythons[0])[:2])
    minimum = tuple(int(x) for x in re.findall(r"\d+", pyproject["project"]["requires-python"])[:2])
    assert env_version >= minimum
    assert "pip" in conda


def test_env_yml_parser_reads_the_simple_format():
    text = "name: x\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n      - Foo_Bar>=1  # c\n      # skip\n      - -e .\nchannels:\n  - defaults\n"
    assert env_yml_pip_requirements(text) == ["Foo_Bar>=1", "-e ."]
    assert env_yml_conda_packages(text) == ["python=3.11", "pip"]
    assert dist_name("Foo_Bar>=1") == "foo-bar"
    assert dist_name("plotly[express]>=6; python_version>'3'") == "plotly"


# --------------------------------------------------------------------------- CI entry point


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    command = readme_test_command()
    lines = script_commands(CI_RUN)
    assert "set -euo pipefail" in lines
    for cmd in command:
        assert cmd in lines, f".ci/run does not run the README's test command {cmd!r}"
    removals = [i for i, ln in enumerate(lines) if re.fullmatch(r"rm -rf (\./)?\.venv/?", ln)]
    assert removals, ".ci/run must delete .venv so that it never reuses an old environment"
    assert removals[0] < lines.index(command[0]), ".ci/run must delete .venv before testing"
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_run_removes_an_existing_venv_then_runs_make_test(tmp_path):
    """Run .ci/run for real in a scratch checkout with a stand-in `make` that records its call."""
    repo = tmp_path / "clone"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy2(CI_RUN, repo / ".ci" / "run")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text("stale")

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "make.log"
    fake_make = fake_bin / "make"
    fake_make.write_text(
        "#!/bin/sh\n"
        f'echo "args=$*" >> "{log}"\n'
        f'if [ -e .venv ]; then echo venv=present >> "{log}"; else echo venv=absent >> "{log}"; fi\n'
        f'echo "ci=$CI" >> "{log}"\n'
    )
    fake_make.chmod(fake_make.stat().st_mode | stat.S_IXUSR)

    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", str(repo / ".ci" / "run")], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = log.read_text().split()
    readme_make = [c for c in readme_test_command() if c.startswith("make")]
    assert recorded == [f"args={readme_make[0].removeprefix('make ')}", "venv=absent", "ci=true"]
    assert not (repo / ".venv").exists()
    assert "[.ci/run]" in done.stdout  # it reports its timing

"""The benchmark suite runs end to end and every contender it times computes the right numbers.

Nothing here checks a time: the machine running the tests may be busy. It checks that the quick
suite runs (at world size 2, through the real CLI), writes a JSON with every section, keeps the
raw samples, and that each contender matched the single-process reference.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import fairscale_peer as bench_fairscale
from benchmarks import titan_peer as bench_titan
from benchmarks.suite import SECTIONS, BenchContext, parse_sections

ROOT = Path(__file__).resolve().parent.parent
# the quick suite starts three fresh processes for the cold start and runs every section once:
# about two minutes on an idle 2-core machine, much more on a busy one
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "moe_lab", "bench", "--quick", "--world-size", "2", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=840)
    return proc, out


def test_quick_suite_writes_every_section_and_every_contender_matches(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((out / "bench-quick-w2.json").read_text())
    assert (out / "bench-quick-w2.html").exists()
    assert list(data["sections"]) == list(SECTIONS)
    meta = data["meta"]
    for key in ("platform", "cores", "torch", "date", "world_size", "quick"):
        assert meta[key] is not None, key
    assert meta["world_size"] == 2 and meta["quick"] is True
    for name, sec in data["sections"].items():
        assert sec["status"] in ("ok", "skipped"), f"{name}: {sec.get('reason')}\n{sec.get('traceback', '')}"
        if sec["status"] == "skipped":
            assert sec["reason"]
            continue
        assert sec["records"], name
        for rec in sec["records"]:
            where = f"{name}: {rec['contender']} {rec['params']}"
            assert rec["matched_reference"] is True, f"{where} did not match the reference: {rec.get('errors')}"
            assert rec["max_err"] <= 1e-4, where
            assert len(rec["samples"]) == rec["n"] >= 1, where
            assert rec["p10"] <= rec["median"] <= rec["p90"], where
            if "world_size" in rec["params"]:
                assert rec["params"]["world_size"] == 2, where
    assert data["sections"]["course"]["status"] == "skipped"  # quick mode never runs the notebooks
    rvp = data["sections"]["ragged_vs_padded"]
    assert all(i["equal"] for i in rvp["bytes_identity"])
    assert rvp["growth"]["ragged"]["bytes_cf_max_over_cf_min"] == pytest.approx(1.0)
    assert {t["name"] for t in data["targets"]} and all("met" in t for t in data["targets"])
    assert "== targets ==" in proc.stdout


def _contenders(data, section):
    return {r["contender"] for r in data["sections"][section]["records"]}


def test_quick_suite_measures_cold_start_with_and_without_prewarm(quick_run):
    _, out = quick_run
    data = json.loads((out / "bench-quick-w2.json").read_text())
    names = _contenders(data, "startup")
    for label in ("prewarm on, Cluster right after import", "prewarm on, Cluster 3 s after import", "prewarm off"):
        assert any(n.startswith("cold start, " + label) for n in names), label
        assert any(n.startswith("import moe_lab, " + label) for n in names), label
    targets = {t["name"]: t for t in data["targets"]}
    assert targets["cold start, Cluster right after import"]["measured"] is not None
    assert targets["cold start, Cluster 3 s after import"]["measured"] is not None


def test_quick_suite_measures_the_step_against_its_bare_alltoalls(quick_run):
    _, out = quick_run
    data = json.loads((out / "bench-quick-w2.json").read_text())
    sec = data["sections"]["interactivity"]
    floor = next(r for r in sec["records"] if r["contender"].startswith("three bare gloo AlltoAlls"))
    assert floor["errors"] == {"rows_not_back": 0.0} and floor["n"] >= 1
    assert any(r["name"] == "step round trip / three bare AlltoAlls" and r["value"] > 0 for r in sec["ratios"])


def test_quick_suite_moves_big_tensors_both_ways_by_value_and_by_shared_memory(quick_run):
    _, out = quick_run
    data = json.loads((out / "bench-quick-w2.json").read_text())
    recs = [r for r in data["sections"]["transport"]["records"] if "direction" in r["params"]]
    assert {(r["params"]["direction"], r["params"]["by_value"]) for r in recs} == {
        ("results", True), ("results", False), ("arguments", True), ("arguments", False)}
    assert all(r["matched_reference"] for r in recs)


def test_peer_section_matches_when_fairscale_is_installed(quick_run):
    _, out = quick_run
    peer = json.loads((out / "bench-quick-w2.json").read_text())["sections"]["peer"]
    if bench_fairscale.available() is None:
        assert peer["status"] == "skipped" and "fairscale" in peer["reason"]
        return
    assert peer["status"] == "ok"
    contenders = {r["contender"] for r in peer["records"]}
    assert contenders == set(bench_fairscale.CONTENDERS.values())
    assert all(r["matched_reference"] for r in peer["records"])
    for c in peer["checks"]:
        assert c["compared_tokens"] > 0 and c["full_sets_equal"]


def test_peer_section_skips_cleanly_without_fairscale(monkeypatch):
    monkeypatch.setattr(bench_fairscale, "available", lambda: None)
    sec = bench_fairscale.section_peer(BenchContext(quick=True, world_size=2))
    assert sec["status"] == "skipped" and "pip install" in sec["reason"]


def test_bad_section_name_is_refused():
    with pytest.raises(ValueError, match="unknown section"):
        parse_sections("startup,warp")
    assert parse_sections("peer,startup") == ["startup", "peer"]


def test_titan_section_matches_when_torchtitan_is_installed(quick_run):
    _, out = quick_run
    sec = json.loads((out / "bench-quick-w2.json").read_text())["sections"]["titan"]
    if bench_titan.available() is None:
        assert sec["status"] == "skipped" and "torchtitan" in sec["reason"]
        return
    assert sec["status"] == "ok"
    assert {r["contender"] for r in sec["records"]} == {bench_titan.OURS, bench_titan.THEIRS}
    assert all(r["matched_reference"] for r in sec["records"])
    assert all(c["compared_tokens"] > 0 for c in sec["checks"])


def test_titan_section_skips_cleanly_without_torchtitan(monkeypatch):
    monkeypatch.setattr(bench_titan, "available", lambda: None)
    sec = bench_titan.section_titan(BenchContext(quick=True, world_size=2))
    assert sec["status"] == "skipped" and "pip install" in sec["reason"]

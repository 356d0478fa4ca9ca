"""The terminal demo: the same step from `python -m moe_lab demo` and from torchrun."""
import os
import shutil
import subprocess
import sys

import pytest


# A hang guard, not a speed check: on 2 cores shared with another test suite, five processes that
# each import torch took over 120 s; a demo that really hangs still fails here.
TIMEOUT_S = 600


def run(cmd):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)


@pytest.mark.timeout(2 * TIMEOUT_S + 60)
def test_torchrun_demo_matches_the_cluster_demo():
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.fail("torchrun not found next to the interpreter")
    args = ["demo", "--skew", "0.6", "--seed", "3", "--tokens-per-rank", "256"]
    via_cluster = run([sys.executable, "-m", "moe_lab", *args, "--world-size", "4"])
    via_torchrun = run([torchrun, "--standalone", "--nproc-per-node", "4", "-m", "moe_lab", *args, "--backend", "gloo"])
    assert via_cluster.returncode == 0, via_cluster.stderr
    assert via_torchrun.returncode == 0, via_torchrun.stderr
    assert "send_counts" in via_cluster.stdout and "dropped:" in via_cluster.stdout
    assert via_torchrun.stdout == via_cluster.stdout


def torchrun_cmd():
    return shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")


@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_torchrun_demo_leaves_no_gloo_thread_behind_its_process_group():
    """The root of the SIGABRT-at-exit flake: a process group that destroy_process_group() cannot
    free keeps gloo's native threads running into interpreter exit."""
    args = ["--standalone", "--nproc-per-node", "2", "tests/torchrun_threads.py", "--tokens-per-rank", "32", "--backend", "gloo"]
    out = run([torchrun_cmd(), *args])
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "threads after the demo" in ln]
    assert len(lines) == 2, out.stderr
    for ln in lines:
        assert "gloo" not in ln, ln


def test_demo_rejects_bad_config_before_starting_ranks():
    out = run([sys.executable, "-m", "moe_lab", "demo", "--world-size", "3", "--experts", "4"])
    assert out.returncode != 0 and "cannot be split evenly" in out.stderr


def test_torchrun_nccl_needs_a_gpu_per_rank_on_the_node(monkeypatch):
    """More torchrun processes on a node than GPUs: a clear error before any process group, not
    CUDA's "invalid device ordinal" in the middle of a step."""
    import torch

    from moe_lab.cli_demo import torchrun_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torchrun_backend("nccl", 2) == "nccl"
    assert torchrun_backend("auto", 2) == "nccl"
    assert torchrun_backend("auto", 4) == "gloo"  # every rank of the node decides alike
    with pytest.raises(ValueError, match="torchrun starts 4 rank.*has 2 GPU.*--nproc-per-node 2 or --backend gloo"):
        torchrun_backend("nccl", 4)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="this node has none"):
        torchrun_backend("nccl", 1)

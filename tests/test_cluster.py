"""The runtime contract: ranks persist, failures surface fast and name the rank, nothing leaks."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from moe_lab import MoEConfig, faults
from moe_lab.cluster import Cluster, ClusterTimeout, RankError


def alive(pids):
    out = []
    for p in pids:
        try:
            os.kill(p, 0)
        except ProcessLookupError:
            continue
        # a zombie still answers kill(0); count only processes that really run
        with open(f"/proc/{p}/stat") as f:
            if f.read().split(")")[-1].split()[0] != "Z":
                out.append(p)
    return out


@pytest.fixture(scope="module")
def cluster():
    with Cluster(world_size=4, timeout=5) as c:
        yield c


def test_ranks_persist_between_calls(cluster):
    first = cluster.run(faults.pid)
    assert cluster.run(faults.pid) == first
    assert len(set(first)) == 4 and os.getpid() not in first


@pytest.mark.parametrize("fn, bad, message", [
    (faults.raise_on, 2, "rank 2 raised"),
    (faults.exit_on, 1, "rank 1 died"),
    (faults.kill_mid_collective, 3, "rank 3 died"),
])
def test_failing_rank_is_named_fast_and_no_process_is_left(cluster, fn, bad, message):
    pids = cluster.run(faults.pid)
    t0 = time.monotonic()
    with pytest.raises(RankError) as err:
        cluster.run(fn, bad)
    assert time.monotonic() - t0 < 2.0
    assert err.value.rank == bad and message in str(err.value)
    if fn is faults.raise_on:
        assert "ValueError: expert on rank 2 failed" in err.value.rank_traceback
    if fn is faults.kill_mid_collective:
        assert "SIGKILL" in str(err.value)
    assert alive(pids) == []
    # the next call starts fresh ranks and works
    assert cluster.run(faults.pid) != pids


def test_hung_rank_is_named_within_the_timeout():
    with Cluster(world_size=3, timeout=2) as c:
        pids = c.run(faults.pid)
        t0 = time.monotonic()
        with pytest.raises(ClusterTimeout) as err:
            c.run(faults.hang_on, 1)
        assert time.monotonic() - t0 < 2 + 1.0
        assert err.value.ranks == [1], str(err.value)
        assert alive(pids) == []


def test_close_and_garbage_collection_leave_no_process():
    c = Cluster(world_size=2)
    pids = c.run(faults.pid)
    c.close()
    assert alive(pids) == []
    c = Cluster(world_size=2)
    pids = c.run(faults.pid)
    del c
    import gc

    gc.collect()
    time.sleep(0.2)
    assert alive(pids) == []


def test_two_clusters_coexist():
    with Cluster(world_size=2) as a, Cluster(world_size=2) as b:
        cfg = MoEConfig(num_experts=2, k=1)
        ta, tb = a.step(cfg, 64), b.step(cfg, 64)
        assert (ta.send_counts == tb.send_counts).all()


SCRIPT = textwrap.dedent("""
    import os, sys
    from moe_lab.cluster import Cluster
    from moe_lab import faults
    if __name__ == "__main__":
        c = Cluster(world_size=3)
        print(" ".join(map(str, c.run(faults.pid))), flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), 9)   # what a kernel restart does to the driving process
        # else: plain interpreter exit without close()
""")


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_ranks_exit_when_the_parent_dies(tmp_path, how):
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, env=env, timeout=60)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 3, out.stderr
    deadline = time.monotonic() + 2.0
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(pids) == []


def test_interrupt_restarts_cleanly():
    with Cluster(world_size=2, timeout=10) as c:
        pids = c.run(faults.pid)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        old = signal.signal(signal.SIGALRM, signal.default_int_handler)
        try:
            with pytest.warns(UserWarning, match="interrupted"), pytest.raises(KeyboardInterrupt):
                c.run(faults.hang_on, 0, 5.0)
        finally:
            signal.signal(signal.SIGALRM, old)
        assert alive(pids) == []
        trace = c.step(MoEConfig(num_experts=2, k=1), 32)
        assert trace.send_counts.sum() == 64


def test_calls_from_two_threads_do_not_interleave(cluster):
    """A widget callback on a kernel thread and a cell may call the same cluster at once."""
    import threading

    cfgs = [MoEConfig(num_experts=4, k=1, seed=s) for s in (1, 2)]
    expected = [cluster.step(c, 64).send_counts for c in cfgs]
    got, errors = {}, []

    def worker(i):
        try:
            for _ in range(5):
                got.setdefault(i, []).append(cluster.step(cfgs[i], 64).send_counts)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for i in (0, 1):
        assert len(got[i]) == 5 and all((g == expected[i]).all() for g in got[i])

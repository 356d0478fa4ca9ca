"""Which rank the Cluster blames, from the evidence it has when a call fails: each rank's error
text, exit code, or silence. NCCL changes the evidence: its watchdog kills the peers that waited
for a hung rank with SIGABRT once the collective timeout passes, and its own error messages say
"NCCL" whether the rank is the cause or a victim. These are unit tests of `_failure` with the
evidence shaped as NCCL leaves it (no GPU needed), plus gloo's, which the Cluster meets on CPUs.
"""
import signal

import pytest

from moe_lab.cluster import ClusterTimeout, RankError, _collective_timeout, _failure

TIMEOUT = 30.0
ABORT = -signal.SIGABRT
AFTER_WATCHDOG = _collective_timeout(TIMEOUT) + 0.1  # seconds into the call: the watchdog has fired
EARLY = 0.2

# what ranks print, shaped like torch 2.x's messages
NCCL_WATCHDOG = ("torch.distributed.DistBackendError: [Rank 0] Watchdog caught collective operation timeout: "
                 "WorkNCCL(SeqNum=7, OpType=ALLTOALL_BASE, NumelIn=4, NumelOut=4, Timeout(ms)=24000) ran for "
                 "24012 milliseconds before timing out.")
NCCL_INVALID = ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:3045, invalid usage "
                "(run with NCCL_DEBUG=WARN for details), NCCL version 2.27.3\nncclInvalidUsage: This usually "
                "reflects invalid usage of NCCL library.\nLast error:\nTensor on cpu, expected cuda:1")
NCCL_CUDA = ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:2010, unhandled cuda error "
             "(run with NCCL_DEBUG=INFO for details)\nncclUnhandledCudaError: Call to CUDA function failed.\n"
             "Last error:\nCuda failure 'invalid device ordinal'")
NCCL_REMOTE = ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:2010, remote process "
               "exited or there was a network error\nncclRemoteError: A call failed possibly due to a network "
               "error or a remote process exiting prematurely.")
GLOO_CLOSED = ("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
               "[127.0.0.1]:41234")
GLOO_TIMEOUT = ("torch.distributed.DistBackendError: [../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] "
                "Timed out waiting 24000ms for recv operation to complete")
USER = "ValueError: expert on rank 2 failed"


def tb(message):
    return f'Traceback (most recent call last):\n  File "moe_lab/step.py", line 40, in step_on_rank\n{message}\n'


def test_nccl_watchdog_victims_of_a_hung_rank_name_the_hung_rank():
    """Rank 1 hangs; ranks 0, 2, 3 wait in the AlltoAll until the watchdog aborts them."""
    err = _failure("step", {}, {0: ABORT, 2: ABORT, 3: ABORT}, {1}, TIMEOUT, AFTER_WATCHDOG)
    assert isinstance(err, ClusterTimeout) and err.ranks == [1]
    assert "ranks 0, 2, 3 were aborted (SIGABRT) by the NCCL watchdog" in str(err)


def test_two_ranks_nccl_hang_names_the_hung_rank_not_rank_0():
    err = _failure("step", {}, {0: ABORT}, {1}, TIMEOUT, AFTER_WATCHDOG)
    assert isinstance(err, ClusterTimeout) and err.ranks == [1]


def test_watchdog_errors_raised_instead_of_aborts_are_secondary_too():
    """With TORCH_NCCL_ASYNC_ERROR_HANDLING set to raise, the victims report the watchdog's message."""
    err = _failure("step", {0: tb(NCCL_WATCHDOG), 2: tb(NCCL_WATCHDOG)}, {}, {1}, TIMEOUT, AFTER_WATCHDOG)
    assert isinstance(err, ClusterTimeout) and err.ranks == [1]
    assert "the others failed waiting for it" in str(err)


def test_an_early_sigabrt_is_a_crash_of_that_rank():
    """Rank 1 aborts (a C++ assertion) at once; its NCCL peers are still waiting: rank 1 is the cause."""
    err = _failure("step", {}, {1: ABORT}, {0, 2, 3}, TIMEOUT, EARLY)
    assert isinstance(err, RankError) and err.rank == 1
    assert "killed by SIGABRT" in str(err)


def test_a_real_nccl_error_on_the_causing_rank_is_primary():
    """Rank 2 misuses NCCL (a CPU tensor); rank 0 sees its peer go away. Rank 2 is named."""
    errors = {0: tb(NCCL_REMOTE), 2: tb(NCCL_INVALID)}
    err = _failure("step", errors, {}, set(), TIMEOUT, EARLY)
    assert isinstance(err, RankError) and err.rank == 2
    assert "ncclInvalidUsage" in err.rank_traceback


@pytest.mark.parametrize("message", [NCCL_INVALID, NCCL_CUDA])
def test_an_nccl_error_beats_a_hung_peer(message):
    """Rank 3's NCCL setup fails while the others wait for it in the collective: rank 3, not a timeout."""
    err = _failure("step", {3: tb(message)}, {}, {0, 1, 2}, TIMEOUT, EARLY)
    assert isinstance(err, RankError) and err.rank == 3


def test_gloo_peers_of_a_rank_that_raised_are_secondary():
    errors = {0: tb(GLOO_CLOSED), 1: tb(GLOO_CLOSED), 2: tb(USER), 3: tb(GLOO_CLOSED)}
    err = _failure("step", errors, {}, set(), TIMEOUT, EARLY)
    assert isinstance(err, RankError) and err.rank == 2
    assert "expert on rank 2 failed" in str(err)


def test_gloo_peers_that_timed_out_name_the_hung_rank():
    errors = {0: tb(GLOO_TIMEOUT), 2: tb(GLOO_TIMEOUT)}
    err = _failure("step", errors, {}, {1}, TIMEOUT, AFTER_WATCHDOG)
    assert isinstance(err, ClusterTimeout) and err.ranks == [1]


def test_a_killed_rank_is_the_cause_whatever_its_peers_say():
    errors = {0: tb(GLOO_CLOSED), 2: tb(GLOO_CLOSED)}
    err = _failure("step", errors, {1: -signal.SIGKILL}, set(), TIMEOUT, EARLY)
    assert isinstance(err, RankError) and err.rank == 1 and "SIGKILL" in str(err)


def test_a_late_sigabrt_with_no_rank_pending_is_still_the_cause():
    """Without a pending rank there is no one the watchdog could have been waiting for."""
    err = _failure("step", {0: tb(GLOO_CLOSED)}, {1: ABORT}, set(), TIMEOUT, AFTER_WATCHDOG)
    assert isinstance(err, RankError) and err.rank == 1

"""Failure attribution: which rank caused a failed call, as opposed to the peers that failed waiting for it.

A rank that raises, exits or is killed makes its peers fail too (their collective loses a
connection, or NCCL's watchdog aborts them after the collective timeout). The parent sees all of
that at once; these rules pick the cause, so the error names the rank a user must look at.
"""
from __future__ import annotations

import signal

# Phrases in a rank's error that mean "my peer went away" or "I timed out waiting", not "I am the
# cause": gloo's lost connections and timeouts, NCCL's watchdog timeout, aborted communicator and
# remote errors. Not "NCCL" or "DistBackendError" as such: an NCCL error on the rank that caused the
# failure (invalid usage, a CUDA error, a setup error) carries those words too, and is primary.
_SECONDARY = ("Connection closed", "Connection reset", "Broken pipe", "Timed out", "timed out", "peer",
              "Watchdog caught collective operation timeout", "NCCL communicator was aborted",
              "ncclRemoteError", "remote process exit")


class RankError(RuntimeError):
    """A rank failed: `rank` names it, `rank_traceback` is its traceback (or exit status)."""

    def __init__(self, rank: int, message: str, rank_traceback: str = ""):
        self.rank, self.rank_traceback = rank, rank_traceback
        super().__init__(f"rank {rank} {message}" + (f"\n--- traceback on rank {rank} ---\n{rank_traceback}" if rank_traceback else ""))


class ClusterTimeout(TimeoutError):
    """Some ranks did not answer within the cluster's timeout (hung); `ranks` lists them."""

    def __init__(self, ranks, timeout, detail=""):
        self.ranks = sorted(ranks)
        who = ", ".join(map(str, self.ranks))
        super().__init__(f"rank{'s' if len(self.ranks) > 1 else ''} {who} did not answer within "
                         f"{timeout:g} s (hung?); all ranks were stopped{detail}")


def _collective_timeout(timeout: float) -> float:
    """Collectives give up a little before the parent does, so that the peers of a hung rank
    report their timeout first and the parent can name the rank that never answered."""
    return max(0.5, 0.8 * timeout)


def _failure(what, errors, dead, pending, timeout, failed_at=None) -> Exception:
    """Name the rank that caused the failure, not the peers that failed waiting for it.

    errors {rank: traceback}, dead {rank: exit code}, pending: ranks that never answered;
    failed_at: seconds into the call of the first failure (None: unknown).
    A rank that died is the cause, except one killed by SIGABRT while another rank is still
    pending, at or after the collective timeout: that is NCCL's watchdog aborting a peer that
    waited for the pending (hung) rank, so the pending rank is named (ClusterTimeout). An early
    SIGABRT (a crash, before any collective could time out) stays the cause.
    """
    late = failed_at is None or failed_at >= 0.9 * _collective_timeout(timeout)
    aborted = {r for r, code in dead.items() if pending and late and code == -signal.SIGABRT}
    died = {r: code for r, code in dead.items() if r not in aborted}
    if died:
        r = min(died)
        code = died[r]
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with code {code}"
        return RankError(r, f"died during {what} ({how})")
    primary = {r: tb for r, tb in errors.items() if not any(w in tb for w in _SECONDARY)}
    if primary:
        r = min(primary)
        return RankError(r, f"raised during {what}: {primary[r].strip().splitlines()[-1]}", primary[r])
    if pending:
        them = "them" if len(pending) > 1 else "it"
        detail = f"; the others failed waiting for {them}" if errors else ""
        if aborted:
            detail += (f"; rank{'s' if len(aborted) > 1 else ''} {', '.join(map(str, sorted(aborted)))} "
                       f"{'were' if len(aborted) > 1 else 'was'} aborted (SIGABRT) by the NCCL watchdog waiting for {them}")
        return ClusterTimeout(pending, timeout, detail)
    r = min(errors)
    return RankError(r, f"raised during {what}: {errors[r].strip().splitlines()[-1]}", errors[r])

"""moe_lab.allreduce: small tensors summed over gloo ranks in one AlltoAll round instead of a ring."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from moe_lab.allreduce import ONE_ROUND_MAX, all_reduce
from moe_lab.cluster import Cluster
from rank_fns import all_reduce_both_ways


@pytest.fixture(scope="module")
def cluster():
    with Cluster(world_size=8) as c:
        yield c


@pytest.mark.parametrize("numel", [1, 512, ONE_ROUND_MAX // 8, ONE_ROUND_MAX // 8 + 1])  # one round, and the ring
def test_the_sum_and_mean_equal_torchs_all_reduce_and_every_rank_holds_the_same_bits(cluster, numel):
    results = cluster.run(all_reduce_both_ways, numel)
    want = sum(torch.randn(numel, generator=torch.Generator().manual_seed(1000 + r)) for r in range(8))
    for ours, mean, ref in results:
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mean, want / 8, rtol=1e-5, atol=1e-5)
    first = results[0][0]
    assert all(torch.equal(ours, first) for ours, _, _ in results)  # replicas stay equal bit for bit


def test_an_op_other_than_sum_or_mean_is_refused_before_any_collective():
    with pytest.raises(ValueError, match="only ReduceOp.SUM and ReduceOp.AVG"):
        all_reduce(torch.ones(2), dist.ReduceOp.MAX)

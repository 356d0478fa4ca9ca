"""The cost model agrees with bytes measured on real ranks, and scales the way the chapter says."""
import pytest

from moe_lab import MoEConfig
from moe_lab.cluster import Cluster
from moe_lab.cost import Hardware, alltoall_bytes, alltoall_time, expert_memory, scaling_table


def test_model_bytes_match_a_measured_dropless_step():
    cfg = MoEConfig(num_experts=4, k=2, capacity_factor=None)
    with Cluster(world_size=4) as c:
        trace = c.step(cfg, tokens_per_rank=256)
    predicted = alltoall_bytes(256, cfg.d_model, cfg.k, 4, bytes_per_elem=4)["total"]
    assert trace.bytes_sent.sum() == pytest.approx(4 * predicted)  # dropless ragged: every copy travels


def test_inter_node_traffic_appears_past_one_node():
    assert alltoall_bytes(1024, 4096, 2, 8)["inter"] == 0
    b = alltoall_bytes(1024, 4096, 2, 64)
    assert b["inter"] == pytest.approx(b["total"] * 56 / 64)
    slow = Hardware(inter_bw=25e9)
    assert alltoall_time(1024, 4096, 2, 64, slow) > alltoall_time(1024, 4096, 2, 64)


def test_ep_divides_expert_memory_and_dp_does_not():
    rows = scaling_table([8, 64, 1024])
    assert all(r["expert_mem_ep"] == rows[0]["expert_mem_ep"] for r in rows)  # one expert per GPU
    assert rows[-1]["expert_mem_dp"] == 128 * rows[0]["expert_mem_dp"]
    with pytest.raises(ValueError, match="cannot be split evenly"):
        expert_memory(10, 8, 8, 4)

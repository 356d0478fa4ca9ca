"""The cost model agrees with bytes measured on real ranks, and scales the way the chapter says."""
import pytest

from moe_lab import MoEConfig
from moe_lab.cluster import Cluster
from moe_lab.cost import (Hardware, alltoall_bytes, alltoall_time, alltoall_time_parts, crossover,
                          expert_compute_time, expert_memory, scaling_table)


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


def test_a_swiglu_expert_holds_three_matrices():
    assert expert_memory(8, 4096, 14336, 8, matrices=3) == 3 * 4096 * 14336 * 2  # Mixtral-sized, per layer, bf16
    assert expert_memory(8, 4096, 14336, 8, matrices=3) == 1.5 * expert_memory(8, 4096, 14336, 8)


def test_latency_term_depends_on_whether_peer_messages_are_serialised():
    serial = alltoall_time_parts(4096, 4096, 2, 1024, Hardware(serial_messages=True))
    together = alltoall_time_parts(4096, 4096, 2, 1024, Hardware(serial_messages=False))
    assert serial["latency"] == pytest.approx(1023 * 5e-6) and together["latency"] == pytest.approx(5e-6)
    assert serial["bandwidth"] == together["bandwidth"]


def test_expert_compute_is_two_flops_per_weight_per_row():
    hw = Hardware(flops=1e12)
    assert expert_compute_time(100, 8, 16, 2, hw, matrices=3) == pytest.approx(100 * 2 * 2 * 3 * 8 * 16 / 1e12)


def test_crossover_is_where_dispatch_plus_combine_outlast_the_experts():
    Ps = [8, 16, 32, 64, 128, 256, 512, 1024]
    mixtral = scaling_table(Ps, matrices=3)  # d 4096, h 14336, k 2: the matmuls hide the AlltoAlls ...
    assert crossover(mixtral) == 512  # ... until P - 1 serialised messages' latency adds up
    assert crossover(scaling_table(Ps, matrices=3, hw=Hardware(serial_messages=False))) is None
    fine = scaling_table(Ps, d_model=7168, d_hidden=2048, k=8, matrices=3)  # DeepSeek-V3-shaped experts
    assert crossover(fine) == 16  # as soon as traffic leaves the node
    r = next(r for r in mixtral if r["P"] == 512)
    assert 2 * r["alltoall_s"] > r["expert_s"] > 2 * next(r for r in mixtral if r["P"] == 256)["alltoall_s"]


def test_hardware_rejects_impossible_numbers():
    with pytest.raises(ValueError, match="inter_bw"):
        Hardware(inter_bw=0)


def test_scaling_figure_marks_the_crossover_only_where_there_is_one():
    from moe_lab.viz import scaling_figure

    Ps = [8, 64, 512, 1024]
    marked = [t for t in scaling_figure(scaling_table(Ps, matrices=3)).data if t.name == "crossover"]
    assert len(marked) == 1 and list(marked[0].x) == [512]
    never = scaling_table(Ps, matrices=3, hw=Hardware(serial_messages=False))
    assert not [t for t in scaling_figure(never).data if t.name == "crossover"]

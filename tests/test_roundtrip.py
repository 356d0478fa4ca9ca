"""The traced token's rows: what the expert ranks really received and returned adds up to y."""
import pytest
import torch

from moe_lab import MoEConfig
from moe_lab.cluster import Cluster
from moe_lab.roundtrip import roundtrip_on_rank
from moe_lab.step import reference_step


def test_token_reaches_both_expert_gpus_and_its_output_is_the_gated_sum_of_the_returned_rows():
    cfg = MoEConfig(num_experts=4, k=2, capacity_factor=1.25, seed=0)
    N, src, token = 64, 1, 5
    with Cluster(world_size=4) as c:
        hops = c.step(cfg, tokens_per_rank=N).hops(src, token)
        kept = [h for h in hops if not h["dropped"]]
        res = c.run(roundtrip_on_rank, cfg, N, src, token, {h["expert_rank"]: h["recv_row"] for h in kept})
    home = res[src]
    assert home["send_rows"].tolist() == [h.get("send_row", -1) for h in hops]
    y_by_hand = torch.zeros_like(home["x"])
    for h in kept:
        there = res[h["expert_rank"]]
        assert torch.equal(there["received"][h["recv_row"]], home["x"])  # the trace's receive row holds x
        assert torch.equal(home["returned"][h["j"]], there["expert_out"][h["recv_row"]])  # and comes back
        y_by_hand += home["gates"][h["j"]] * home["returned"][h["j"]]
    y_ref, _, _ = reference_step(cfg, 4, N, backward=False)
    assert torch.allclose(y_by_hand, y_ref[src * N + token], atol=1e-6)
    assert torch.allclose(home["y"], y_ref[src * N + token], atol=1e-6)


def test_a_wrong_receive_row_is_caught():
    cfg = MoEConfig(num_experts=2, k=1, capacity_factor=None, seed=0)
    with Cluster(world_size=2) as c:
        hop = c.step(cfg, tokens_per_rank=16).hops(0, 3)[0]
        wrong = (hop["recv_row"] + 1) % 16
        res = c.run(roundtrip_on_rank, cfg, 16, 0, 3, {hop["expert_rank"]: wrong})
    assert not torch.equal(res[hop["expert_rank"]]["received"][wrong], res[0]["x"])


def test_roundtrip_rejects_what_it_does_not_follow():
    with Cluster(world_size=2) as c, pytest.raises(Exception, match="one expert per rank"):
        c.run(roundtrip_on_rank, MoEConfig(num_experts=4, k=2), 8, 0, 0, {})

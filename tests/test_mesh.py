"""DP 2 × EP 2 × TP 2 on 8 real ranks equals the single-process reference."""
import pytest
import torch

from moe_lab import MoEConfig, reference
from moe_lab.cluster import Cluster
from moe_lab.mesh import composed_step_on_rank, coords, layout
from moe_lab.workload import init_weights, make_tokens, upstream_grad


def test_layout_slices_one_grid():
    lay = layout(8, 2, 2, 2)
    assert lay["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lay["ep"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert lay["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert lay["router"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert coords(6, 2, 2, 2) == (1, 1, 0)
    with pytest.raises(ValueError, match="dp × ep × tp = 2 × 2 × 1 = 4, but world_size = 8"):
        layout(8, 2, 2, 1)


@pytest.mark.parametrize("cf, dispatch", [(1.25, "ragged"), (None, "padded")])
def test_dp_ep_tp_equals_reference(cf, dispatch):
    dp, ep, tp, N = 2, 2, 2, 32
    cfg = MoEConfig(num_experts=4, k=2, capacity_factor=cf, dispatch=dispatch, seed=5)
    with Cluster(world_size=8, timeout=60) as c:
        out = c.run(composed_step_on_rank, cfg, dp, ep, tp, N, 0.3)
    router_w, w_in, w_out = (w.requires_grad_() for w in init_weights(cfg))
    x = make_tokens(cfg, dp * ep, N, 0.3, router_w.detach()).requires_grad_()
    y, info = reference.moe_forward(x, router_w, w_in, w_out, cfg, world_size=dp * ep)
    ((y * upstream_grad(cfg, dp * ep, N)).sum() + info["aux_loss"].sum() + info["z_loss"].sum()).backward()
    m, h = cfg.num_experts // ep, cfg.d_hidden // tp
    for trace, t, log in out:
        b, (d_, e_, t_) = t["block"], t["coords"]
        rows = slice(b * N, (b + 1) * N)
        torch.testing.assert_close(t["y"], y.detach()[rows], rtol=0, atol=1e-5)
        torch.testing.assert_close(t["x_grad"], x.grad[rows], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(t["router_grad"], router_w.grad, rtol=1e-4, atol=1e-5)
        experts, cols = slice(e_ * m, (e_ + 1) * m), slice(t_ * h, (t_ + 1) * h)
        torch.testing.assert_close(t["w_in_grad"], w_in.grad[experts][:, :, cols], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(t["w_out_grad"], w_out.grad[experts][:, cols, :], rtol=1e-4, atol=1e-5)
        groups = {g for _, g, _ in log}
        assert {"ep", "tp", "dp", "router"} <= groups

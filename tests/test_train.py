"""Training on 8 real ranks: the router collapses without balancing; α (or the bias) fixes it."""
import numpy as np
import pytest

from moe_lab import MoEConfig
from moe_lab.cluster import Cluster
from moe_lab.train import train

CFG = MoEConfig(num_experts=8, k=2, capacity_factor=1.25, seed=0)
RUN = dict(steps=40, tokens_per_rank=128, chunk=10)  # the BalancingLab's run


@pytest.fixture(scope="module")
def runs():
    with Cluster(world_size=8, timeout=60) as c:
        out = {b: list(train(c, CFG, balance=b, **RUN)) for b in ("none", "aux")}
        # the bias needs scores that differ between tokens: from the collapsed start every token gives
        # expert 0 the same probability ~1, and a bias step moves them all at once
        out["bias"] = list(train(c, CFG, balance="bias", start="random", **RUN))
        out["none, random start"] = list(train(c, CFG, balance="none", start="random", **RUN))
        return out


def busiest_over_fair(records, last=5):
    share = np.mean([r["load_share"] for r in records[-last:]], axis=0)  # [E]
    return share.max() * len(share)


def test_router_starts_collapsed(runs):
    for name in ("none", "aux"):
        assert runs[name][0]["max_over_mean"] >= 3.9  # (almost) every token has expert 0 in its top 2; at most 4


def test_without_balancing_the_busiest_expert_keeps_twice_its_share(runs):
    assert busiest_over_fair(runs["none"]) >= 2.0


def test_aux_loss_with_the_default_alpha_balances_load(runs):
    assert CFG.aux_alpha == MoEConfig().aux_alpha
    assert busiest_over_fair(runs["aux"]) <= 1.3


def test_aux_loss_free_bias_also_balances(runs):
    assert busiest_over_fair(runs["none, random start"]) >= 1.5  # without balancing a random start drifts
    assert busiest_over_fair(runs["bias"]) <= 1.3


def test_the_task_is_learned(runs):
    for records in runs.values():
        assert records[-1]["task_loss"] < 0.6 * records[0]["task_loss"]


def test_bad_training_arguments():
    with Cluster(world_size=2, start=False) as c:
        with pytest.raises(ValueError, match="balance='magic'"):
            next(train(c, MoEConfig(num_experts=2, k=1), balance="magic"))
        with pytest.raises(ValueError, match="steps=0"):
            next(train(c, MoEConfig(num_experts=2, k=1), steps=0))
        assert not c.running


@pytest.mark.parametrize("balance", ["aux", "aux+bias"])
def test_training_on_ranks_equals_the_single_process_twin(balance):
    """Forward, backward through both AlltoAlls, router all-reduce, Adam and the bias update on 2 ranks
    give the numbers `reference_train` computes in one process, step after step."""
    from moe_lab.train import reference_train

    cfg = MoEConfig(num_experts=4, k=2, capacity_factor=1.0, aux_alpha=0.1, seed=1)
    kw = dict(steps=6, tokens_per_rank=32, balance=balance, gamma=0.05, lr=0.02)
    with Cluster(world_size=2, timeout=60) as c:
        got = list(train(c, cfg, chunk=4, **kw))
    ref = list(reference_train(cfg, 2, **kw))
    for g, r in zip(got, ref, strict=True):
        assert g["chosen_count"] == r["chosen_count"] and g["kept_count"] == r["kept_count"], g["step"]
        assert g["task_loss"] == pytest.approx(r["task_loss"], rel=1e-4)
        assert g["aux_loss"] == pytest.approx(r["aux_loss"], rel=1e-4, abs=1e-7)
    assert any(g["dropped_share"] > 0 for g in got)  # capacity mattered, so the slots were checked too


def test_adam_matches_torch_adam():
    """moe_lab.adam.Adam is torch.optim.Adam with its defaults, without importing torch._dynamo."""
    import torch

    from moe_lab.adam import Adam

    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(5, 3, generator=g, requires_grad=True), torch.randn(4, generator=g, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = Adam([dict(params=ours[:1], lr=0.01), dict(params=ours[1:], lr=0.3)])
    opt_theirs = torch.optim.Adam([dict(params=theirs[:1], lr=0.01), dict(params=theirs[1:], lr=0.3)])
    for step in range(20):
        targets = torch.randn(5, 3, generator=g), torch.randn(4, generator=g)
        for ps, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            sum(((p - t) ** 2).sum() for p, t in zip(ps, targets)).backward()
            opt.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"step {step}")
    assert not torch.equal(ours[0], theirs[0].new_zeros(5, 3))


def test_training_and_overlap_never_import_the_compiler_on_a_rank():
    """torch._dynamo costs 1.6 s per process: neither a training step (Adam) nor the chunked
    pipeline's asynchronous AlltoAll may import it, so the ranks' forkserver need not preload it."""
    from rank_fns import compiler_loaded

    with Cluster(world_size=2, nodes=2, timeout=60) as c:
        assert c.run(compiler_loaded) == [False, False]
        list(train(c, MoEConfig(num_experts=2, k=1, seed=0), steps=2, tokens_per_rank=16))
        c.step(MoEConfig(num_experts=2, k=1, capacity_factor=None, chunks=2), tokens_per_rank=16, backward=True)
        assert c.run(compiler_loaded) == [False, False]

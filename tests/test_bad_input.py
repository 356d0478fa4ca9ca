"""Bad input gets a clear error before any process starts (or without hanging)."""
import math
import time

import pytest
import torch

from moe_lab import MoEConfig, reference, routing
from moe_lab.cluster import Cluster, check_importable
from moe_lab.workload import init_weights, make_tokens


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_experts=8, k=9), "k=9 but there are 8 experts"),
    (dict(k=0), "choose 1 <= k"),
    (dict(capacity_factor=0), "capacity_factor=0"),
    (dict(capacity_factor=-1.0), "capacity_factor=-1.0"),
    (dict(capacity_factor=math.nan), "capacity_factor=nan"),
    (dict(capacity_factor="big"), "capacity_factor='big'"),
    (dict(policy="reroute"), "policy='reroute'"),
    (dict(priority="random"), "priority='random'"),
    (dict(dispatch="sparse"), "dispatch='sparse'"),
    (dict(aux_alpha=-0.1), "aux_alpha"),
    (dict(num_experts=0), "num_experts=0"),
    (dict(d_model=0), "d_model=0"),
])
def test_invalid_config_is_refused_with_a_clear_message(kwargs, words):
    with pytest.raises(ValueError, match=None) as err:
        MoEConfig(**kwargs)
    assert words in str(err.value)


@pytest.mark.parametrize("world_size", [0, -2, 1.5, "8"])
def test_invalid_world_size(world_size):
    with pytest.raises(ValueError, match="world_size"):
        Cluster(world_size=world_size)


def test_experts_must_split_evenly_over_ranks_before_any_process_starts():
    with Cluster(world_size=2, start=False) as c:
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="num_experts=3 cannot be split evenly over world_size=2"):
            c.step(MoEConfig(num_experts=3, k=1))
        assert not c.running and time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("kwargs, words", [
    (dict(tokens_per_rank=0), "tokens_per_rank=0"),
    (dict(skew=1.5), "skew=1.5"),
])
def test_invalid_step_arguments(kwargs, words):
    with Cluster(world_size=2, start=False) as c:
        with pytest.raises(ValueError, match=words.replace(".", r"\.")):
            c.step(MoEConfig(num_experts=2, k=1), **kwargs)
        assert not c.running


def test_nccl_without_gpus_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="backend='nccl' needs one GPU per rank"):
        Cluster(world_size=2, backend="nccl")


def test_unknown_backend_and_bad_timeout():
    with pytest.raises(ValueError, match="backend='mpi'"):
        Cluster(world_size=2, backend="mpi")
    with pytest.raises(ValueError, match="timeout"):
        Cluster(world_size=2, timeout=0)


def test_function_from_a_notebook_cell_is_refused(monkeypatch):
    import __main__

    monkeypatch.delattr(__main__, "__file__", raising=False)  # what a Jupyter kernel looks like
    ns = {"__name__": "__main__"}
    exec("def my_step(ctx):\n    return ctx.rank\n", ns)
    with pytest.raises(ValueError, match="notebook cell"):
        check_importable(ns["my_step"])
    with pytest.raises(ValueError, match="lambda"):
        check_importable(lambda ctx: 0)
    with pytest.raises(TypeError, match="must be a function"):
        check_importable(42)


def test_unpicklable_arguments_are_refused_before_sending():
    from moe_lab import faults

    with Cluster(world_size=1, start=False) as c:
        with pytest.raises(TypeError, match="cannot be sent to the ranks"):
            c.run(faults.pid, lambda: 0)
        assert not c.running


def test_reference_checks_shapes():
    cfg = MoEConfig(num_experts=4, k=2)
    rw, wi, wo = init_weights(cfg)
    x = make_tokens(cfg, 2, 8)
    with pytest.raises(ValueError, match="d_model=64"):
        reference.moe_forward(x[:, :10], rw, wi, wo, cfg, 2)
    with pytest.raises(ValueError, match="not a multiple of world_size=2"):
        reference.moe_forward(x[:15], rw, wi, wo, cfg, 2)
    with pytest.raises(ValueError, match="cannot be split evenly"):
        reference.moe_forward(x, rw, wi, wo, cfg, 3)
    with pytest.raises(ValueError, match="k=5"):
        routing.top_k_gating(torch.zeros(3, 4), 5)
    with pytest.raises(ValueError, match="policy='bounce'"):
        routing.assign_slots(torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.long), 1, policy="bounce")

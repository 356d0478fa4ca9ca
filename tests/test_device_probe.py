"""Every rank function hands its collectives tensors on ctx.device only (the NCCL contract),
proven on CPU ranks by tests/device_probe.py: the default device is "meta" and each collective
asserts its inputs are on the rank's device. Results must come back as CPU tensors.

A new rank function joins the probe with one `case(...)` line in CASES.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from device_probe import ByName, probe
from moe_lab import MoEConfig, faults
from moe_lab.cluster import Cluster, RankError
from moe_lab.mesh import composed_step_on_rank
from moe_lab.step import step_on_rank
from moe_lab.train import BALANCE, train_steps_on_rank
from rank_fns import bad_input_on_rank, collective_on_default_device, returns_device_tensor, sum_in_one_round_on_rank

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
CFG = MoEConfig(num_experts=4, k=2, capacity_factor=1.25, d_model=8, d_hidden=16, seed=0)  # m = 2 per rank


def case(name, fn, *args, path=None, expect=()):
    """One probed call: fn(ctx, *args) on every rank; `expect` names collectives it must reach."""
    return pytest.param(fn, args, path, expect, id=name)


def ex6_modules(folder: Path) -> str:
    """Write exercise 6's rank modules (its %%writefile cells, solutions included) into folder."""
    nb = json.loads((ROOT / "solutions" / "ex6_distributed_dispatch.ipynb").read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and src.startswith("%%writefile"):
            first, _, body = src.partition("\n")
            (folder / first.split()[1]).write_text(body)
    return str(folder)


EX6 = ex6_modules(Path(tempfile.mkdtemp(prefix="moe_lab_ex6_probe_")))
sys.path.insert(0, EX6)  # the parent imports ex6_ranks too, as the notebook's kernel does
# the layer's AlltoAll is a plain all_to_all_single inside its own autograd Function (dispatch.py)
A2A, AR = "distributed.all_to_all_single", "distributed.all_reduce"

CASES = [
    *(case(f"step {d} {'fwd+bwd' if b else 'fwd'}", step_on_rank, CFG.replace(dispatch=d), 16, 0.3, b, True,
           expect=(A2A,) + ((AR,) if b else ()))
      for d in ("ragged", "padded") for b in (False, True)),
    case("step dropless skew 1", step_on_rank, CFG.replace(capacity_factor=None), 16, 1.0, True, True, expect=(A2A,)),
    case("step shared experts", step_on_rank, CFG.replace(num_shared=1), 16, 0.3, True, True, expect=(A2A, AR)),
    case("step fine-grained", step_on_rank, CFG.fine_grained(2), 16, 0.3, True, True, expect=(A2A, AR)),
    case("step expert choice", step_on_rank, CFG.replace(router="expert_choice"), 16, 0.3, True, True, expect=(A2A, AR)),
    *(case(f"train {bal} steps 0-1", train_steps_on_rank, CFG, 16, bal, 0.01, 0.01, "collapsed", 0, 2,
           expect=(A2A, AR)) for bal in BALANCE),
    *(case(f"mesh dp{dp} ep{ep} tp{tp}", composed_step_on_rank, CFG, dp, ep, tp, 8, 0.3, expect=(AR,))
      for dp, ep, tp in ((1, 2, 1), (1, 1, 2), (2, 1, 1))),
    *(case(f"faults.{f.__name__}", f, -1, expect=(A2A,))  # no rank is bad: every rank reaches the collective
      for f in (faults.raise_on, faults.exit_on, faults.kill_mid_collective, faults.hang_on)),
    case("gloo's all-reduce in one round", sum_in_one_round_on_rank, expect=(A2A,)),
    case("ex6 check_dispatch", "ex6_ranks:check_dispatch", ByName("student_dispatch:dispatch"), CFG, 16, 0.3,
         path=EX6, expect=(A2A,)),
    case("ex6 round_trip", "ex6_ranks:round_trip", ByName("student_dispatch:dispatch"),
         ByName("student_combine:combine"), CFG, 16, 0.3, path=EX6, expect=(A2A,)),
]


@pytest.fixture(scope="module")
def cluster():
    with Cluster(world_size=WORLD, timeout=60) as c:
        yield c


@pytest.mark.parametrize("fn, args, path, expect", CASES)
def test_every_collective_input_is_on_the_rank_device(cluster, fn, args, path, expect):
    out = cluster.run(probe, fn, *args, path=path)
    for rank, (_, calls) in enumerate(out):
        assert calls, f"rank {rank} reached no collective: the probe checked nothing"
        missing = [op for op in expect if op not in calls]
        assert not missing, f"rank {rank} never called {missing}; it called {calls}"


def test_ex6_combine_with_expert_outputs_sent_from_the_parent(cluster):
    """check_combine gets its expert outputs from the parent (CPU tensors): the rank moves them."""
    import torch

    from moe_lab import reference, workload

    N, skew = 16, 0.3
    router_w, w_in, w_out = workload.init_weights(CFG)
    x = workload.make_tokens(CFG, WORLD, N, skew, router_w)
    y_ref = reference.moe_forward(x, router_w, w_in, w_out, CFG, WORLD)[0]
    # the expert outputs each rank must send back, from a probed round trip's own dispatch
    got = cluster.run(probe, "ex6_ranks:round_trip", ByName("student_dispatch:dispatch"),
                      ByName("student_combine:combine"), CFG, N, skew, path=EX6)
    torch.testing.assert_close(torch.cat([y for y, _ in got]), y_ref, rtol=0, atol=1e-5)
    sent = cluster.run(probe, "ex6_ranks:check_dispatch", ByName("student_dispatch:dispatch"), CFG, N, skew, path=EX6)
    import ex6_ranks  # written by ex6_modules above

    expert_out = [(ex6_ranks.run_experts(CFG, rank, recv, counts), counts)  # CPU tensors, made here
                  for rank, ((recv, counts), _) in enumerate(sent)]
    ys = cluster.run(probe, "ex6_ranks:check_combine", ByName("student_combine:combine"), CFG, N, skew,
                     expert_out, path=EX6)
    torch.testing.assert_close(torch.cat([y for y, _ in ys]), y_ref, rtol=0, atol=1e-5)


def test_probe_catches_a_tensor_made_without_a_device(cluster):
    with pytest.raises(RankError, match=r"all_reduce got a tensor on meta .*rank_fns.py"):
        cluster.run(probe, collective_on_default_device)


def test_a_result_on_another_device_is_refused_at_the_reply(cluster):
    with pytest.raises(RankError, match=r"result\[0\]\['y'\] is on meta.*CPU"):
        cluster.run(probe, returns_device_tensor)


def test_tokens_on_another_device_get_a_clear_error(cluster):
    with pytest.raises(RankError, match=r"x is on meta but this rank's layer is on cpu; move the tokens first"):
        cluster.run(bad_input_on_rank, CFG, "device")


def test_rank_set_up_turns_tf32_off_and_refuses_a_missing_gpu(monkeypatch):
    import torch

    from moe_lab.device import rank_device

    assert rank_device("gloo", 0) == (torch.device("cpu"), {})
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="local rank 2 needs GPU 2, but 2 GPU"):
        rank_device("nccl", 2)

"""The NCCL path on one GPU, checked against the single-process reference (run by gpu_check.sh).

Each check prints one line `PASS|FAIL name: detail` and the whole run writes a short Markdown
report. Nothing here runs without a CUDA GPU: the CPU test suite proves the same code paths
with gloo and the wrong-device probe (tests/test_device_probe.py); this is the part only a GPU
can show (NCCL communicators, CUDA tensors in every collective, synced timings, TF32 off).

    python benchmarks/gpu_check.py --report benchmarks/results/gpu_check.md
"""
from __future__ import annotations

import argparse
import platform
import time
import traceback

import torch

from moe_lab import MoEConfig, faults
from moe_lab.cluster import Cluster, ClusterTimeout, RankError
from moe_lab.mesh import composed_step_on_rank
from moe_lab.step import reference_step, step_on_rank
from moe_lab.train import train

N, SKEW = 256, 0.3


def rank_numerics(ctx):
    """What the rank's set-up left in force: its device, matmul precision, cuDNN TF32 flag."""
    return str(ctx.device), torch.get_float32_matmul_precision(), bool(torch.backends.cudnn.allow_tf32)


def check_step(cluster, dispatch, backward):
    cfg = MoEConfig(num_experts=4, k=2, capacity_factor=1.25, dispatch=dispatch, seed=1)
    (trace, got), = cluster.run(step_on_rank, cfg, N, SKEW, backward, True)
    y_ref, grads, _ = reference_step(cfg, 1, N, backward, SKEW)
    torch.testing.assert_close(got["y"], y_ref, rtol=1e-5, atol=1e-5)
    for name, ref in grads.items():
        torch.testing.assert_close(got[name], ref, rtol=1e-4, atol=1e-5)
    times = trace.times
    assert times["total"] > 0 and all(v >= 0 for v in times.values()), times
    return f"y{' and 4 gradients' if backward else ''} = reference; rank time {1e3 * times['total']:.2f} ms"


def check_bias_training(cluster):
    cfg = MoEConfig(num_experts=4, k=2, capacity_factor=1.25, seed=0)
    recs = list(train(cluster, cfg, steps=5, tokens_per_rank=128, balance="bias"))
    losses = [r["task_loss"] for r in recs]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    return f"5 steps; busiest/fair {recs[0]['max_over_mean']:.2f} -> {recs[-1]['max_over_mean']:.2f}; task loss {losses[-1]:.4f}"


def check_mesh(cluster):
    from moe_lab import reference
    from moe_lab.workload import init_weights, make_tokens, upstream_grad

    cfg = MoEConfig(num_experts=4, k=2, capacity_factor=1.25, seed=5)
    (trace, t, log), = cluster.run(composed_step_on_rank, cfg, 1, 1, 1, N, SKEW)
    router_w, w_in, w_out = (w.requires_grad_() for w in init_weights(cfg))
    x = make_tokens(cfg, 1, N, SKEW, router_w.detach()).requires_grad_()
    y, info = reference.moe_forward(x, router_w, w_in, w_out, cfg, world_size=1)
    ((y * upstream_grad(cfg, 1, N)).sum() + info["aux_loss"].sum() + info["z_loss"].sum()).backward()
    torch.testing.assert_close(t["y"], y.detach(), rtol=1e-5, atol=1e-5)
    for name, ref in (("x_grad", x.grad), ("router_grad", router_w.grad), ("w_in_grad", w_in.grad), ("w_out_grad", w_out.grad)):
        assert t[name].device.type == "cpu", (name, t[name].device)
        torch.testing.assert_close(t[name], ref, rtol=1e-4, atol=1e-5)
    return f"dp = ep = tp = 1: y and gradients = reference, CPU tensors back; {len(log)} collectives"


def check_faults(backend, timeout):
    out = []
    with Cluster(world_size=1, backend=backend, timeout=timeout) as c:
        try:
            c.run(faults.raise_on, 0)
            raise AssertionError("raise_on did not raise")
        except RankError as e:
            assert e.rank == 0, e
            out.append("raise_on -> RankError(rank 0)")
        t0 = time.monotonic()
        try:
            c.run(faults.hang_on, 0, 3 * timeout)
            raise AssertionError("hang_on did not time out")
        except ClusterTimeout as e:
            assert e.ranks == [0], e
            out.append(f"hang_on -> ClusterTimeout([0]) after {time.monotonic() - t0:.1f} s")
        assert c.run(faults.pid), "the cluster did not restart after the failures"
    return "; ".join(out) + "; restarted"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", default=None, help="also write the Markdown report here")
    ap.add_argument("--backend", default="nccl", choices=["nccl", "gloo"],
                    help="gloo: a dry run of this script on a CPU (checks the script, not the GPU path)")
    args = ap.parse_args()
    lines = []
    if args.backend == "nccl" and not torch.cuda.is_available():
        print("FAIL no CUDA GPU visible: nothing to check")
        return 2
    gpu = (f"CUDA {torch.version.cuda}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, {torch.cuda.get_device_name(0)} "
           f"({torch.cuda.device_count()} visible)" if args.backend == "nccl" else "gloo dry run on the CPU")
    head = f"torch {torch.__version__}, {gpu}, Python {platform.python_version()}"
    print(head)
    failed = 0
    with Cluster(world_size=1, backend=args.backend, timeout=120) as cluster:
        checks = [("rank set-up", lambda: "device {}, matmul precision {}, cuDNN TF32 {}".format(*cluster.run(rank_numerics)[0]))]
        checks += [(f"step {d} {'fwd+bwd' if b else 'fwd'}", lambda d=d, b=b: check_step(cluster, d, b))
                   for d in ("ragged", "padded") for b in (False, True)]
        checks += [("bias training", lambda: check_bias_training(cluster)), ("mesh step", lambda: check_mesh(cluster))]
        for name, fn in checks:
            try:
                lines.append(f"PASS {name}: {fn()}")
            except Exception:  # noqa: BLE001 - report every check, then fail the run
                failed += 1
                lines.append(f"FAIL {name}: {traceback.format_exc().strip().splitlines()[-1]}")
            print(lines[-1], flush=True)
    try:
        lines.append(f"PASS fault demo: {check_faults(args.backend, timeout=10)}")
    except Exception:  # noqa: BLE001
        failed += 1
        lines.append(f"FAIL fault demo: {traceback.format_exc().strip().splitlines()[-1]}")
    print(lines[-1], flush=True)
    if args.report:
        with open(args.report, "a") as f:
            f.write(f"- {head}\n" + "".join(f"- {ln}\n" for ln in lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

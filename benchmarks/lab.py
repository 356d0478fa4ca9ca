"""Benchmark section `lab`: does the BalancingLab feel live?

A change of α trains the router for 40 steps on the ranks (forward, backward through both AlltoAlls,
router all-reduce, Adam) and redraws the figures. Timed headless, as a kernel sees it: setting the
slider's `.value` returns when the run and every redraw are done. Side by side, interleaved rep by
rep: one plain forward `Cluster.step` of the same size. Checked first: the ranks' training equals the
single-process twin `moe_lab.train.reference_train` step for step. Also side by side: the router
gradient's sum over the ranks by gloo's ring all_reduce and by one AlltoAll round (moe_lab/allreduce.py).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .common import check, ratio, record, rel_err
from moe_lab.config import MoEConfig

LAB_TOKENS, LAB_STEPS = 128, 40
CHECK_STEPS = 5


def _check_against_twin(cluster, cfg, N) -> dict:
    """Relative error of the ranks' training records against the one-process twin (counts must be equal)."""
    from moe_lab.train import reference_train, train

    got = list(train(cluster, cfg, steps=CHECK_STEPS, tokens_per_rank=N, chunk=CHECK_STEPS))
    ref = list(reference_train(cfg, cluster.world_size, CHECK_STEPS, N))
    loss = max(abs(g["task_loss"] - r["task_loss"]) / abs(r["task_loss"]) for g, r in zip(got, ref))
    counts = float(sum(g["chosen_count"] != r["chosen_count"] or g["kept_count"] != r["kept_count"]
                       for g, r in zip(got, ref)))
    return check({"task_loss": loss, "count_mismatches": counts})


def section_lab(bc) -> dict:
    try:
        from moe_lab.widgets import BalancingLab
    except Exception as e:  # noqa: BLE001 - no ipywidgets / plotly: say so and go on
        return dict(status="skipped", reason=f"widgets not importable ({e})")
    P, cluster = bc.world_size, bc.cluster
    cfg = MoEConfig(num_experts=8 if 8 % P == 0 else P, k=2, capacity_factor=1.25, seed=0)
    params = dict(world_size=P, tokens_per_rank=LAB_TOKENS, steps=LAB_STEPS)
    checked = _check_against_twin(cluster, cfg, LAB_TOKENS)
    reps = bc.reps(1, 6)
    bar = bc.progress(2 * reps + 1, "lab")
    lab = BalancingLab(cluster, cfg, steps=LAB_STEPS, tokens_per_rank=LAB_TOKENS)
    bar.update(1)
    slider, values = lab.sliders["aux_alpha"], (0.0, 0.01)
    run_s, first_s, ranks_s, step_s, redrawn = [], [], [], [], []
    for rep in range(reps):
        for which in (("lab", "step") if rep % 2 == 0 else ("step", "lab")):
            if which == "lab":
                target = values[0] if slider.value == values[1] else values[1]
                done = lab.runs_done
                t0 = time.perf_counter()
                slider.value = target  # headless: 40 training steps and every redraw before this returns
                run_s.append(time.perf_counter() - t0)
                first_s.append(lab.first_redraw_s)
                ranks_s.append(lab.ranks_s)
                redrawn.append(lab.runs_done == done + 1 and len(lab.history) == LAB_STEPS and
                               list(lab.figures["load"].data[0].y) == lab.history[-1]["gpu_tokens"])
            else:
                t0 = time.perf_counter()
                cluster.step(cfg, LAB_TOKENS)
                step_s.append(time.perf_counter() - t0)
            bar.update(1)
    bar.close()
    ring, one_round = _router_all_reduce(cluster, cfg, bc.reps(3, 10))
    ok = dict(checked, matched_reference=checked["matched_reference"] and all(redrawn))
    rec_run = record(f"BalancingLab: alpha slider -> {LAB_STEPS} training steps + redraws", run_s, params,
                     figures_updated=redrawn, ranks_s=ranks_s, ranks_median_s=float(np.median(ranks_s)), **ok)
    rec_first = record("BalancingLab: alpha slider -> first redraw", first_s, params, **ok)
    rec_step = record("one forward Cluster.step, same size", step_s, dict(params, steps=1), **checked)
    return dict(status="ok", records=[rec_run, rec_first, rec_step, ring, one_round],
                ratios=[dict(name="lab run / one forward step", params=params, value=ratio(rec_run, rec_step),
                             meaning=f"a {LAB_STEPS}-step training run (fwd+bwd+Adam, live redraws) in forward steps"),
                        dict(name="router gradient: ring all_reduce / one round", params=ring["params"],
                             value=ratio(ring, one_round), meaning="what summing in one AlltoAll round saves a "
                             "training step (moe_lab/allreduce.py)")],
                notes=[f"the lab's records were first checked against moe_lab.train.reference_train for {CHECK_STEPS} "
                       "steps (task loss to 1e-4, every count equal)",
                       f"median per training step: {1e3 * float(np.median(run_s)) / LAB_STEPS:.1f} ms, of which waiting "
                       f"for the ranks {1e3 * float(np.median(ranks_s)) / LAB_STEPS:.1f} ms (the rest: merging and drawing)"])


def _router_all_reduce(cluster, cfg, reps: int):
    """The router gradient's sum over the ranks, gloo's ring all_reduce against one AlltoAll round
    (what training uses for small tensors), interleaved; each call's time is the max over ranks."""
    from .ranks import router_grad_all_reduce

    shape = (cfg.d_model, cfg.num_experts)
    times = {False: [], True: []}
    sums = {}
    for rep in range(reps):
        for one_round in ((False, True) if rep % 2 == 0 else (True, False)):
            parts = cluster.run(router_grad_all_reduce, shape, 20, one_round)
            times[one_round].append(max(t for t, _ in parts))
            sums[one_round] = [s for _, s in parts]
    want = sum(torch.randn(*shape, generator=torch.Generator().manual_seed(r)) for r in range(cluster.world_size))
    errors = {name: max(rel_err(s, want) for s in sums[flag]) for name, flag in (("ring", False), ("one_round", True))}
    same_bits = all(torch.equal(s, sums[True][0]) for s in sums[True])
    checked = check(dict(errors, replicas_differ=0.0 if same_bits else 1.0))
    params = dict(world_size=cluster.world_size, shape=list(shape), backend=cluster.backend)
    return (record("router gradient [d, E]: gloo ring all_reduce", times[False], params, **checked),
            record("router gradient [d, E]: one all_to_all_single round", times[True], params, **checked))

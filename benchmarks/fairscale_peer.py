"""The peer comparison: fairscale's `MOELayer` + `Top2Gate` (GShard) against `moe_lab.MoELayer`.

Both layers run inside the same Cluster ranks, on the same tokens and the same weights, with the
same thread settings, top-2 and the same capacity. fairscale is optional (the `bench` extra):
without it the section is skipped with a message saying how to install it.

How fairscale 0.4.13 routes (fairscale/nn/moe/top2gate.py), and how we line the two up:
  * logits = x @ wg.weight.T (a bias-free Linear): we load wg.weight = router_wᵀ.
  * capacity = 2 · S // E with S the tokens of this rank: the same as our C = ceil(cf · k · N / E)
    with cf = 1, k = 2 (S divisible by E).
  * first choices take slots in token order, then second choices after *all* first choices
    (locations2 += sum(mask1) before capacity is applied): exactly our priority="position".
  * the second expert is the argmax of logits + Gumbel noise (always on, training or not). We set
    the noise to zeros through fairscale's own per-device sampler cache (`gumbel_map`), so the
    second choice is the plain top-2. Sampling an [S, E] noise tensor costs next to nothing
    beside the [S, E, C] dispatch and combine tensors, so this leaves fairscale's speed alone.
  * gates are renormalised over the *kept* choices (ours are fixed at gating time), so the two
    layers agree exactly on tokens whose two choices were both kept; those are compared.
  * dispatch and combine are dense einsums with [S, E, C] one-hot masks: O(S² · d) work and
    O(S²) memory per rank, which is why the gap grows with the tokens per rank.
"""
from __future__ import annotations

import importlib.util
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .common import check, ratio, record, rel_err, verify_step
from .ranks import peak_rss_reset, rss_bytes

SIZES = (512, 2048, 4096, 8192)
MODES = (("fwd", False), ("fwd+bwd", True))
OURS, OURS_PADDED, THEIRS = "moe_lab MoELayer", "moe_lab MoELayer (padded)", "fairscale MOELayer+Top2Gate"
CONTENDERS = {"ours": OURS, "ours_padded": OURS_PADDED, "fairscale": THEIRS}


def fairscale_bytes_per_rank(tokens_per_rank: int, num_experts: int) -> int:
    """A safe upper estimate of fairscale's gating memory on one rank: its forward holds several
    [S, E, C] float tensors at once (combine weights, both one-hot products, the float dispatch
    mask) and autograd keeps some for backward; 8 of them, C = 2 S / E."""
    S = tokens_per_rank
    return 8 * S * num_experts * max(1, 2 * S // num_experts) * 4


def available() -> str | None:
    """fairscale's version, or None when it is not installed."""
    if importlib.util.find_spec("fairscale") is None:
        return None
    import fairscale

    return getattr(fairscale, "__version__", "unknown")


def peer_config(world_size: int):
    """One expert per rank, top-2, d=64, hidden 256, capacity factor 1 (fairscale's 2·S/E)."""
    from moe_lab.config import MoEConfig

    return MoEConfig(num_experts=world_size, k=2, capacity_factor=1.0, policy="drop", priority="position",
                     dispatch="ragged", d_model=64, d_hidden=256, normalize_gates=True, aux_alpha=0.01, z_alpha=0.0)


# ---- on the ranks --------------------------------------------------------------------------------
class ExpertFFN(nn.Module):
    """Our expert E(x) = relu(x @ w_in) @ w_out as an nn.Module, for fairscale's MOELayer."""

    def __init__(self, w_in: torch.Tensor, w_out: torch.Tensor):
        super().__init__()
        self.w_in = nn.Parameter(w_in.detach().clone())  # [d, h]
        self.w_out = nn.Parameter(w_out.detach().clone())  # [h, d]

    def forward(self, x):
        from moe_lab.experts import expert_ffn

        shape = x.shape
        return expert_ffn(x.reshape(-1, shape[-1]), self.w_in, self.w_out).reshape(shape)


def _setup(ctx, cfg, N: int):
    """Both layers and this rank's tokens and upstream gradient, built once per (cfg, N)."""
    key = ("bench_peer", cfg, N)
    cache = ctx.state("bench.peer")
    if key in cache:
        return cache[key]
    from fairscale.nn.moe import MOELayer, Top2Gate
    from fairscale.nn.moe import top2gate as fs_top2

    from moe_lab.layer import MoELayer
    from moe_lab.workload import init_weights, make_tokens, upstream_grad

    dev = ctx.device
    fs_top2.gumbel_map[dev] = lambda shape: torch.zeros(shape, device=dev)  # plain top-2 (see module doc)
    P, r = ctx.world_size, ctx.rank
    router_w, w_in, w_out = init_weights(cfg)
    ours = MoELayer(cfg, ctx.group, dev).load_global_weights(router_w, w_in, w_out)
    padded = MoELayer(cfg.replace(dispatch="padded"), ctx.group, dev).load_global_weights(router_w, w_in, w_out)
    gate = Top2Gate(cfg.d_model, cfg.num_experts).to(dev)
    with torch.no_grad():
        gate.wg.weight.copy_(router_w.T)
    m = cfg.num_experts // P
    experts = nn.ModuleList([ExpertFFN(w_in[r * m + e], w_out[r * m + e]) for e in range(m)]).to(dev)
    theirs = MOELayer(gate, experts, ctx.group)
    x = make_tokens(cfg, P, N, 0.0, router_w)[r * N:(r + 1) * N].to(dev)
    g = upstream_grad(cfg, P, N)[r * N:(r + 1) * N].to(dev)
    if len(cache) > 8:
        cache.clear()
    cache[key] = (ours, padded, theirs, x, g)
    return cache[key]


def _forward(which: str, layer, x):
    """y [N, d] and the balancing loss of one layer."""
    if which.startswith("ours"):
        y, trace = layer(x)
        return y, layer.aux_loss, trace.times
    y = layer(x.unsqueeze(0)).squeeze(0)  # fairscale wants (sequence, token, model)
    return y, layer.l_aux, None


def timed_step(ctx, cfg, N: int, which: str, backward: bool, measure_memory: bool = False) -> dict:
    """One forward (+ backward of Σ y·g + aux) of 'ours', 'ours_padded' or 'fairscale', timed after
    a barrier. For ours, also the forward's phases (RankTrace.times)."""
    ours, padded, theirs, x0, g = _setup(ctx, cfg, N)
    layer = dict(ours=ours, ours_padded=padded, fairscale=theirs)[which]
    layer.zero_grad(set_to_none=True)
    x = x0.detach().clone().requires_grad_(backward)
    if measure_memory:
        peak_rss_reset()
    before = rss_bytes()["rss"]
    dist.barrier(group=ctx.group)
    t0 = time.perf_counter()
    with torch.set_grad_enabled(backward):
        y, aux, phases = _forward(which, layer, x)
        if backward:
            ((y * g).sum() + aux).backward()
    elapsed = time.perf_counter() - t0
    out = dict(time_s=elapsed, phases=phases)
    if measure_memory:
        out["peak_extra_bytes"] = max(0, rss_bytes()["peak"] - before)
    return out


def peer_check(ctx, cfg, N: int) -> dict:
    """Run both layers on the same tokens; compare y and every gradient on fully kept tokens.

    A token is compared when both of its choices were kept by *both* layers; the loss is
    Σ over those tokens of y · g, so every gradient (x, router, this rank's experts) comes from
    tokens on which the two layers must agree exactly.
    """
    ours, _, theirs, x0, g = _setup(ctx, cfg, N)
    x_o = x0.detach().clone().requires_grad_(True)
    x_f = x0.detach().clone().requires_grad_(True)
    ours.zero_grad(set_to_none=True)
    theirs.zero_grad(set_to_none=True)
    y_o, trace = ours(x_o)
    y_f = theirs(x_f.unsqueeze(0)).squeeze(0)
    with torch.no_grad():
        _, _, dispatch_mask = theirs.gate(x0)  # [N, E, C] the slots fairscale filled
    kept_f = dispatch_mask.sum(dim=(1, 2))  # [N] kept choices per token
    chosen_f = dispatch_mask.any(dim=2)  # [N, E]
    expert_o = torch.from_numpy(trace.used)  # [N, k], -1 dropped
    full_o = (expert_o >= 0).all(dim=1)
    full_f = kept_f == cfg.k
    both = full_o & full_f
    same_choice = chosen_f[both].gather(1, expert_o[both]).all(dim=1)  # fairscale used our two experts
    w = both.to(y_o.dtype).unsqueeze(1)
    (y_o * g * w).sum().backward()
    (y_f * g * w).sum().backward()
    m = ours.w_in.shape[0]
    errors = dict(y_vs_ours=rel_err(y_f.detach()[both], y_o.detach()[both]),
                  x_grad=rel_err(x_f.grad, x_o.grad),
                  router_grad=rel_err(theirs.gate.wg.weight.grad.T, ours.router_w.grad),
                  w_in_grad=max(rel_err(theirs.experts[e].w_in.grad, ours.w_in.grad[e]) for e in range(m)),
                  w_out_grad=max(rel_err(theirs.experts[e].w_out.grad, ours.w_out.grad[e]) for e in range(m)))
    return dict(errors=errors, y=y_f.detach().cpu(), both=both.cpu(), tokens=N,
                full_ours=int(full_o.sum()), full_fairscale=int(full_f.sum()), compared=int(both.sum()),
                full_sets_equal=bool(torch.equal(full_o, full_f)), choice_mismatches=int((~same_choice).sum()))


# ---- in the parent: the section ----------------------------------------------------------------
def section_peer(bc) -> dict:
    version = available()
    if version is None:
        return dict(status="skipped", reason="fairscale is not installed; install the optional extra "
                    "(pip install 'moe_lab[bench]', or pip install fairscale==0.4.13 --no-deps) to compare")
    from .common import memory_available_bytes

    P = bc.world_size
    cfg = peer_config(P)
    sizes = [n for n in bc.sizes(SIZES) if n % cfg.num_experts == 0]
    reps = {512: bc.reps(3, 10), 2048: bc.reps(3, 6), 4096: bc.reps(2, 4), 8192: bc.reps(2, 3)}
    records, ratios, checks, skipped, notes = [], [], [], [], [
        f"fairscale {version}; second-choice Gumbel noise set to zero so both layers take the plain top-2",
        "time = max over ranks of each rank's forward (+ backward of sum(y*g) + aux loss), after a barrier",
        f"capacity per expert per source rank: ours ceil(1.0*2*N/{cfg.num_experts}), fairscale 2*N//{cfg.num_experts}"]
    peak_per_token2 = None  # fairscale's peak extra memory per rank / N² (median over ranks), last size run
    mem_note = ("fairscale's dense gating holds several [S, E, C] tensors per rank (O(S^2) memory); a size is "
                "skipped when its estimate over all ranks does not fit in 60% of the available memory")
    notes.append(mem_note)
    bar = bc.progress(sum(2 * (3 * reps.get(n, 3) + 1) for n in sizes) + 2 * len(sizes), "peer")
    for N in sizes:
        need = P * max(fairscale_bytes_per_rank(N, cfg.num_experts), 1.5 * (peak_per_token2 or 0) * N * N)
        avail = memory_available_bytes()
        if avail is not None and need > 0.6 * avail:
            skipped.append(dict(tokens_per_rank=N, reason=f"fairscale would need about {need / 2**30:.1f} GiB over "
                                f"{P} ranks ([S, E, C] gating tensors grow as S^2); {avail / 2**30:.1f} GiB available"))
            continue
        try:
            got = _measure_size(bc, cfg, N, reps.get(N, 3), bar)
        except Exception as e:  # noqa: BLE001 - e.g. a rank killed for memory: keep the smaller sizes
            skipped.append(dict(tokens_per_rank=N, reason=f"failed: {type(e).__name__}: {str(e).splitlines()[0]}"))
            bc.close()
            continue
        records += got["records"]
        ratios += got["ratios"]
        checks.append(got["check"])
        peak_per_token2 = got["peak_per_token2"]
    estimates = []
    for miss in [s for s in skipped if s["tokens_per_rank"] == max(SIZES)]:
        try:
            got = _estimate_size(bc, cfg, miss["tokens_per_rank"], records, reps.get(miss["tokens_per_rank"], 3))
        except Exception as e:  # noqa: BLE001 - the measured sizes still stand
            miss["estimate_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            bc.close()
            continue
        if got:
            records += got["records"]
            ratios += got["ratios"]
            estimates += got["estimates"]
    if estimates:
        notes.append("N=8192: fairscale's time is estimated from its own measured growth 2048 -> 4096 tokens/rank "
                     "(t8192 = t4096 * t4096 / t2048; its dense [S, E, C] gating grows as S^2), ours is measured")
    bar.close()
    return dict(status="ok", config=cfg.to_dict(), records=records, ratios=ratios, checks=checks,
                skipped_sizes=skipped, estimates=estimates, notes=notes)


def _estimate_size(bc, cfg, N: int, records: list, reps: int) -> dict | None:
    """fairscale at N from its measured N/4 and N/2 runs (t(N) = t(N/2)^2 / t(N/4)); ours measured at N."""
    P, cluster = bc.world_size, bc.cluster
    fs = {(r["params"]["tokens_per_rank"], r["params"]["mode"]): r for r in records if r["contender"] == THEIRS}
    if not all((n, mode) in fs for n in (N // 4, N // 2) for mode, _ in MODES):
        return None
    ours_check = verify_step(cluster, cfg, N, backward=True)
    out, ratios, estimates = [], [], []
    for mode, backward in MODES:
        params = dict(tokens_per_rank=N, mode=mode, world_size=P)
        cluster.run(timed_step, cfg, N, "ours", backward)
        times = [max(g["time_s"] for g in cluster.run(timed_step, cfg, N, "ours", backward)) for _ in range(reps)]
        rec = record(OURS, times, params, **ours_check)
        out.append(rec)
        a, b = fs[(N // 4, mode)]["median"], fs[(N // 2, mode)]["median"]
        est = b * b / a
        estimates.append(dict(tokens_per_rank=N, mode=mode, fairscale_estimate_s=est, from_s={N // 4: a, N // 2: b},
                              growth_per_doubling=b / a))
        ratios.append(dict(name=f"estimated speedup vs fairscale, {mode}, N={N}", params=params, value=est / rec["median"],
                           estimated=True, meaning="fairscale's estimated time / moe_lab's measured time"))
    return dict(records=out, ratios=ratios, estimates=estimates)


def _measure_size(bc, cfg, N: int, reps: int, bar) -> dict:
    """Check both layers at N tokens per rank, then time them interleaved, fwd and fwd+bwd."""
    from moe_lab.step import reference_step

    P, cluster = bc.world_size, bc.cluster
    records, ratios, peak_per_token2 = [], [], None
    ours_check = verify_step(cluster, cfg, N, backward=True)
    padded_check = verify_step(cluster, cfg.replace(dispatch="padded"), N, backward=True)
    parts = cluster.run(peer_check, cfg, N)
    y_ref, _, _ = reference_step(cfg, P, N, False)
    both = torch.cat([p["both"] for p in parts])
    fs_errors = {"y_vs_reference": rel_err(torch.cat([p["y"] for p in parts])[both], y_ref[both])}
    for name in parts[0]["errors"]:
        fs_errors[name] = max(p["errors"][name] for p in parts)
    fs_errors["choice_mismatches"] = float(sum(p["choice_mismatches"] for p in parts))
    fs_check = check(fs_errors)
    info = dict(compared_tokens=int(both.sum()), tokens=P * N,
                full_ours=sum(p["full_ours"] for p in parts), full_fairscale=sum(p["full_fairscale"] for p in parts),
                full_sets_equal=all(p["full_sets_equal"] for p in parts))
    size_check = dict(tokens_per_rank=N, ours=ours_check, ours_padded=padded_check, fairscale=fs_check, **info)
    checks = dict(ours=ours_check, ours_padded=padded_check, fairscale=fs_check)
    bar.update(2)
    for mode, backward in MODES:
        params = dict(tokens_per_rank=N, mode=mode, world_size=P)
        warm = cluster.run(timed_step, cfg, N, "fairscale", backward, True)
        cluster.run(timed_step, cfg, N, "ours", backward)
        cluster.run(timed_step, cfg, N, "ours_padded", backward)
        if backward:
            peak_per_token2 = float(np.median([w["peak_extra_bytes"] for w in warm])) / (N * N)
        bar.update(2)
        order = list(CONTENDERS)
        times = {c: dict(max=[], per_rank=[], round_trip=[], phases=[]) for c in order}
        for rep in range(reps):
            for which in (order if rep % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                got = cluster.run(timed_step, cfg, N, which, backward)
                rt = time.perf_counter() - t0
                per_rank = [g["time_s"] for g in got]
                t = times[which]
                t["max"].append(max(per_rank))
                t["per_rank"].append(per_rank)
                t["round_trip"].append(rt)
                if got[0]["phases"] is not None:
                    t["phases"].append({ph: max(g["phases"].get(ph, 0.0) for g in got) for ph in got[0]["phases"]})
                bar.update(1)
        recs = {}
        for which, label in CONTENDERS.items():
            t = times[which]
            extra = dict(per_rank_s=t["per_rank"], round_trip_s=t["round_trip"])
            if t["phases"]:
                extra["forward_phases_max_over_ranks_s"] = t["phases"]
                extra["forward_phase_medians_s"] = {ph: float(np.median([p[ph] for p in t["phases"]]))
                                                    for ph in t["phases"][0]}
            if which == "fairscale":
                extra["peak_extra_bytes_per_rank"] = [w["peak_extra_bytes"] for w in warm]
            recs[which] = record(label, t["max"], params, **extra, **checks[which])
            records.append(recs[which])
        ratios.append(dict(name=f"speedup vs fairscale, {mode}, N={N}", params=params,
                           value=ratio(recs["fairscale"], recs["ours"]),
                           meaning="fairscale time / moe_lab time (higher = ours faster)"))
        ratios.append(dict(name=f"speedup vs fairscale (ours padded), {mode}, N={N}", params=params,
                           value=ratio(recs["fairscale"], recs["ours_padded"]),
                           meaning="the same with padded (equal-split, no count exchange) dispatch"))
    return dict(records=records, ratios=ratios, check=size_check, peak_per_token2=peak_per_token2)

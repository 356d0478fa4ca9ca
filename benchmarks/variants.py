"""Benchmark section `variants`: chapter 6's routing variants timed side by side on the same ranks.

Token choice (top-2), token choice + 1 shared expert, fine-grained experts (m = 4: top-8 of 32)
and expert choice, each on the same seeded tokens (skew 0: literally the same tokens for every
variant), at 512 and 2048 tokens per rank, forward. Contenders are interleaved rep by rep; each
is first checked against the single-process reference (output and routing tables). Per variant
the record keeps the step's wall time, the dispatch bytes (StepTrace.bytes_sent summed over
ranks), the AlltoAll phases, drops, tokens that got no routed expert and the per-GPU load.
"""
from __future__ import annotations

import time

import torch

from .common import check, phase_stats, ratio, record, rel_err
from moe_lab.config import MoEConfig
from moe_lab.trace import PHASES

SIZES = (512, 2048)
GRANULARITY = 4


def variant_configs(world_size: int) -> dict:
    """The chapter's four layers (moe_lab.variants) from the course's layer, one expert per rank."""
    from moe_lab.variants import chapter_variants

    base = MoEConfig(num_experts=world_size, k=min(2, world_size), capacity_factor=1.25)
    return chapter_variants(base, num_shared=1, m=GRANULARITY)


def verify_variant(cluster, cfg, tokens_per_rank: int, backward: bool = False) -> dict:
    """Every rank's output, gradients and routing tables against `reference_step`."""
    from moe_lab.step import gather_tensors, reference_step, step_on_rank

    parts = cluster.run(step_on_rank, cfg, tokens_per_rank, 0.0, backward, True)
    got = gather_tensors(parts)
    y_ref, grads_ref, info = reference_step(cfg, cluster.world_size, tokens_per_rank, backward, 0.0)
    errors = {"y": rel_err(got["y"], y_ref)}
    errors.update({name: rel_err(got[name], ref) for name, ref in grads_ref.items()})
    used = torch.cat([torch.from_numpy(tr.used) for tr, _ in parts])
    errors["routing_mismatches"] = float((used != info["used"]).sum())
    return check(errors)


def section_variants(bc) -> dict:
    P, cluster = bc.world_size, bc.cluster
    cfgs = variant_configs(P)
    names = list(cfgs)
    sizes = bc.sizes(SIZES)
    reps = {512: bc.reps(2, 12), 2048: bc.reps(2, 8)}
    bar = bc.progress(sum(len(names) * (reps[n] + 1) for n in sizes), "variants")
    records, ratios = [], []
    for N in sizes:
        checks = {}
        for name in names:
            checks[name] = verify_variant(cluster, cfgs[name], N)
            cluster.step(cfgs[name], N)  # warm: layer and tokens built on the ranks
            bar.update(1)
        times = {name: [] for name in names}
        traces = {name: [] for name in names}
        for rep in range(reps[N]):
            for name in (names if rep % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                traces[name].append(cluster.step(cfgs[name], N))
                times[name].append(time.perf_counter() - t0)
                bar.update(1)
        for name in names:
            tr, cfg = traces[name][-1], cfgs[name]
            params = dict(world_size=P, tokens_per_rank=N, mode="fwd", variant=name, router=cfg.router,
                          num_experts=cfg.num_experts, k=cfg.k, num_shared=cfg.num_shared,
                          granularity=cfg.granularity, capacity_factor=cfg.capacity_factor)
            records.append(record(
                f"{name}", times[name], params,
                bytes_sent=int(tr.bytes_sent.sum()), kept=int(tr.kept.sum()), dropped=int(tr.dropped.sum()),
                tokens_without_expert=tr.tokens_without_expert, recv_tokens=tr.recv_tokens.tolist(),
                load_imbalance=tr.load_imbalance, capacity=tr.capacity,
                max_experts_per_token=int(tr.experts_per_token.max()),
                phases=phase_stats(traces[name], PHASES), **checks[name]))
        base = next(r for r in records if r["params"]["tokens_per_rank"] == N and r["contender"] == names[0])
        for rec in records:
            if rec["params"]["tokens_per_rank"] == N and rec is not base:
                ratios.append(dict(name=f"{rec['contender']} / token choice, time, N={N}", params=dict(rec["params"]),
                                   value=ratio(rec, base), meaning="step time against plain top-k token choice"))
                ratios.append(dict(name=f"{rec['contender']} / token choice, bytes, N={N}", params=dict(rec["params"]),
                                   value=rec["bytes_sent"] / base["bytes_sent"] if base["bytes_sent"] else None,
                                   meaning="dispatch bytes against plain top-k token choice"))
    bar.close()
    return dict(status="ok", records=records, ratios=ratios, notes=[
        "same seeded tokens (skew 0) and layer (d=64, hidden 256, one expert per rank, capacity factor 1.25, "
        "ragged dispatch) for every variant; forward only; Cluster.step round trip",
        "bytes = dispatch payload summed over ranks (combine sends the same back); the shared expert moves none",
        f"fine-grained: each expert cut into {GRANULARITY} pieces, top-{GRANULARITY * 2} of {GRANULARITY * 8} at 8 "
        "ranks: same parameters and FLOPs per token, up to 4x the AlltoAll rows (pieces of one expert travel "
        "separately; rows to the same rank are not merged)",
        "expert choice: every expert takes exactly C tokens per source rank; tokens_without_expert counts the "
        "tokens no expert picked"])


TABLE_HEADERS = ["variant", "N/rank", "ms", "bytes", "dropped", "no expert", "max/mean load", "matched"]


def table_rows(section: dict) -> list:
    """(variant, N, ms [p10 - p90], bytes, dropped, tokens without expert, max/mean load) for the terminal table."""
    out = []
    for r in section.get("records", []):
        out.append((r["contender"], r["params"]["tokens_per_rank"],
                    f"{1e3 * r['median']:.1f} [{1e3 * r['p10']:.1f} - {1e3 * r['p90']:.1f}]",
                    f"{r['bytes_sent'] / 2**20:.2f} MiB", r["dropped"], r["tokens_without_expert"],
                    f"{r['load_imbalance']:.2f}", "yes" if r["matched_reference"] else "NO"))
    return out

"""Chapter 6's routing variants: shared experts, fine-grained experts and expert-choice routing.

Single-process claims first (the pieces of a fine-grained expert sum to the coarse one, experts
pick their top-C tokens, shared experts are the wide FFN they claim to be, bad settings are
refused), then the claim that matters: on W real ranks every variant gives the reference's
outputs, gradients and routing tables, at world sizes 1, 2, 4 and 8, over a fixed matrix and
over random configs drawn by hypothesis (one round trip to the ranks per batch of configs).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_lab import MoEConfig, reference, routing
from moe_lab.cluster import Cluster
from moe_lab.expert_choice import choice_tables, select_tokens
from moe_lab.experts import expert_ffn
from moe_lab.shared_experts import shared_ffn
from moe_lab.step import gather_tensors, reference_step
from moe_lab.variants import chapter_variants, counts, rows_once_per_rank, summarize
from moe_lab.workload import init_shared_weights, init_weights, make_tokens
from rank_fns import step_many

N = 16  # tokens per rank in the distributed checks: small capacities, so drops and empty tokens happen
SMALL = dict(d_model=16, d_hidden=64)  # small experts keep many cases per round trip fast


# ---- fine-grained experts -----------------------------------------------------------------------
def test_pieces_of_a_fine_grained_expert_sum_to_the_coarse_expert():
    g = torch.Generator().manual_seed(0)
    w_in, w_out = torch.randn(3, 8, 12, generator=g), torch.randn(3, 12, 8, generator=g)
    x = torch.randn(5, 8, generator=g)
    for m in (1, 2, 3, 4, 6):
        p_in, p_out = reference.split_experts(w_in, w_out, m)
        assert p_in.shape == (3 * m, 8, 12 // m) and p_out.shape == (3 * m, 12 // m, 8)
        assert p_in.numel() + p_out.numel() == w_in.numel() + w_out.numel()  # parameters unchanged
        for e in range(3):
            pieces = sum(expert_ffn(x, p_in[e * m + j], p_out[e * m + j]) for j in range(m))
            torch.testing.assert_close(pieces, expert_ffn(x, w_in[e], w_out[e]), rtol=1e-5, atol=1e-5)
        # piece e*m + j is columns j*h/m .. of w_in[e] and the same rows of w_out[e]
        torch.testing.assert_close(p_in[m - 1], w_in[0][:, (m - 1) * 12 // m : 12])
        torch.testing.assert_close(p_out[m], w_out[1][: 12 // m])


def test_fine_grained_keeps_parameters_flops_and_capacity_and_multiplies_combinations():
    cfg = MoEConfig(num_experts=8, k=2, d_hidden=256, num_shared=1)
    fine = cfg.fine_grained(4)
    assert (fine.num_experts, fine.k, fine.d_hidden, fine.num_shared, fine.granularity) == (32, 8, 64, 4, 4)
    params = lambda c: (c.num_experts + c.num_shared) * 2 * c.d_model * c.d_hidden  # noqa: E731
    flops = lambda c: (c.k + c.num_shared) * 4 * c.d_model * c.d_hidden  # noqa: E731  per token
    assert params(fine) == params(cfg) and flops(fine) == flops(cfg)
    assert routing.capacity(512, fine.num_experts, 1.25, fine.k) == routing.capacity(512, 8, 1.25, 2)
    assert math.comb(32, 8) == 10_518_300 and math.comb(8, 2) == 28
    assert fine.fine_grained(2).granularity == 8
    # the fine config's seeded experts are the coarse ones cut in pieces: the same parameters
    w_c, w_f = init_weights(cfg), init_weights(fine)
    for got, want in zip(w_f[1:], reference.split_experts(*w_c[1:], 4)):
        assert torch.equal(got, want)
    for got, want in zip(init_shared_weights(fine), reference.split_experts(*init_shared_weights(cfg), 4)):
        assert torch.equal(got, want)


def test_fine_grained_layer_with_pieces_chosen_together_is_the_coarse_layer_scaled_by_gate_sharing():
    """A router that repeats each coarse column m times makes the m pieces tie, so top-(k·m)
    takes whole experts; the renormalised gates then split each coarse gate m ways: y_fine = y/m."""
    cfg = MoEConfig(num_experts=4, k=2, capacity_factor=None, d_hidden=32)
    m = 4
    fine = cfg.fine_grained(m)
    rw, wi, wo = init_weights(cfg)
    x = make_tokens(cfg, 1, 24)
    y, info = reference.moe_forward(x, rw, wi, wo, cfg)
    yf, info_f = reference.moe_forward(x, rw.repeat_interleave(m, dim=1), *reference.split_experts(wi, wo, m), fine)
    torch.testing.assert_close(yf * m, y, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.sort(info_f["chosen"] // m, dim=1).values,
                       torch.sort(info["chosen"].repeat_interleave(m, dim=1), dim=1).values)


# ---- expert choice ------------------------------------------------------------------------------
def test_expert_choice_worked_example():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    tokens = select_tokens(probs, 2)
    assert tokens.tolist() == [[0, 1], [2, 1]]
    used, slot, gates = choice_tables(probs, tokens)
    assert used.tolist() == [[0, -1], [0, 1], [-1, 1]]
    assert slot.tolist() == [[0, -1], [1, 1], [-1, 0]]
    assert torch.equal(gates, torch.tensor([[0.9, 0.0], [0.6, 0.4], [0.0, 0.8]]))


def test_expert_choice_ties_go_to_the_lower_token_and_capacity_caps_at_n():
    probs = torch.full((5, 3), 1 / 3)
    assert select_tokens(probs, 2).tolist() == [[0, 1]] * 3
    assert select_tokens(probs, 9).shape == (3, 5)  # C >= N: every expert takes every token


def _expert_choice_by_hand(probs, C):
    """Loop version of the DESIGN rule: expert e takes the C tokens with the highest probs[:, e]."""
    N, E = probs.shape
    used = -np.ones((N, E), dtype=int)
    slot = -np.ones((N, E), dtype=int)
    for e in range(E):
        order = sorted(range(N), key=lambda t: (-float(probs[t, e]), t))[: min(C, N)]
        for s, t in enumerate(order):
            used[t, e], slot[t, e] = e, s
    return used, slot


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 20), E=st.integers(1, 8), C=st.integers(1, 25), seed=st.integers(0, 10_000),
       quantised=st.booleans())
def test_expert_choice_matches_the_rule_written_out_by_hand(N, E, C, seed, quantised):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, E, generator=g)
    if quantised:  # coarse logits make ties common
        logits = logits.round()
    probs = torch.softmax(logits, -1)
    used, slot, gates = choice_tables(probs, select_tokens(probs, C))
    want_used, want_slot = _expert_choice_by_hand(probs, C)
    assert np.array_equal(used.numpy(), want_used) and np.array_equal(slot.numpy(), want_slot)
    assert ((used >= 0).sum(0) == min(C, N)).all()  # every expert exactly C tokens: balanced by construction
    assert torch.equal(gates[used >= 0], probs[used >= 0])  # gate = router probability, no renormalisation


def test_expert_choice_in_the_reference_balances_but_leaves_some_tokens_without_an_expert():
    cfg = MoEConfig(num_experts=8, k=2, capacity_factor=1.0, router="expert_choice")
    _, _, info = reference_step(cfg, 2, 64, False, skew=1.0)
    C = routing.capacity(64, 8, 1.0, 2)
    assert info["kept"].tolist() == [2 * C] * 8 and info["dropped"].sum() == 0
    per_token = info["experts_per_token"]
    assert per_token.sum() == 2 * 8 * C and (per_token == 0).any() and per_token.max() > 2
    assert float(info["aux_loss"].abs().sum()) == 0.0


# ---- shared experts -----------------------------------------------------------------------------
def test_shared_experts_are_one_wide_ffn_and_add_to_every_token():
    cfg = MoEConfig(num_experts=4, k=1, num_shared=3, d_hidden=16)
    rw, wi, wo = init_weights(cfg)
    sh = init_shared_weights(cfg)
    x = make_tokens(cfg, 2, 8)
    loop = sum(expert_ffn(x, sh[0][s], sh[1][s]) for s in range(3))
    torch.testing.assert_close(shared_ffn(x, *sh), loop, rtol=1e-5, atol=1e-5)
    y0, _ = reference.moe_forward(x, rw, wi, wo, cfg.replace(num_shared=0), 2)
    y, _ = reference.moe_forward(x, rw, wi, wo, cfg, 2, shared=sh)
    torch.testing.assert_close(y, y0 + loop, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_shared=3"):
        reference.moe_forward(x, rw, wi, wo, cfg, 2)
    with pytest.raises(ValueError, match=r"w_in \[3, 64, 16\]"):
        reference.moe_forward(x, rw, wi, wo, cfg, 2, shared=(sh[0][:2], sh[1][:2]))


def test_adding_shared_experts_leaves_the_routed_experts_seeded_as_before():
    cfg = MoEConfig(num_experts=4, k=2)
    for a, b in zip(init_weights(cfg), init_weights(cfg.replace(num_shared=2))):
        assert torch.equal(a, b)
    assert init_shared_weights(cfg) is None


# ---- autograd through every variant ---------------------------------------------------------------
VARIANTS = {
    "token choice": dict(),
    "+ shared": dict(num_shared=1),
    "fine-grained": dict(granularity=2),
    "expert choice": dict(router="expert_choice"),
    "expert choice + shared, fine": dict(router="expert_choice", num_shared=1, granularity=2),
}


def variant(name, **base):
    changes = dict(VARIANTS[name])
    m = changes.pop("granularity", 1)
    return MoEConfig(**base).replace(**changes).fine_grained(m)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_backpropagates_into_router_experts_and_shared(name):
    cfg = variant(name, num_experts=4, k=2, capacity_factor=1.0, aux_alpha=0.01)
    _, grads, _ = reference_step(cfg, 2, 16, True, skew=0.3)
    for g_name, g in grads.items():
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, g_name
    assert ("shared_w_in_grad" in grads) == (cfg.num_shared > 0)


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda: MoEConfig(num_shared=-1), "num_shared=-1"),
    (lambda: MoEConfig(num_shared=1.5), "num_shared=1.5"),
    (lambda: MoEConfig(d_hidden=256).fine_grained(3), "m=3 does not divide d_hidden=256"),
    (lambda: MoEConfig().fine_grained(0), "m=0"),
    (lambda: MoEConfig(num_experts=8, granularity=3), "granularity=3 but num_experts=8"),
    (lambda: MoEConfig(router="expert_choice", capacity_factor=None), "needs a capacity_factor"),
    (lambda: MoEConfig(router="expert_choice", policy="overflow"), "use policy='drop'"),
    (lambda: MoEConfig(router="hash"), "router='hash'"),
    (lambda: reference.split_experts(torch.zeros(2, 4, 6), torch.zeros(2, 6, 4), 4), "m=4"),
])
def test_bad_variant_settings_are_refused_with_a_clear_message(make, words):
    with pytest.raises(ValueError, match=None) as err:
        make()
    assert words in str(err.value)


def test_bad_variant_is_refused_before_any_rank_starts():
    with Cluster(world_size=4, start=False) as c:
        with pytest.raises(ValueError, match="num_experts=6 cannot be split evenly over world_size=4"):
            c.step(MoEConfig(num_experts=3, k=1).fine_grained(2))
        with pytest.raises(ValueError, match="router='expert_choice' needs a capacity_factor"):
            c.step(MoEConfig(num_experts=4, k=1).replace(router="expert_choice", capacity_factor=None))
        assert not c.running


# ---- the distributed runs equal the reference ------------------------------------------------------
@pytest.fixture(scope="module", params=[1, 2, 4, 8])
def cluster(request):
    with Cluster(world_size=request.param, timeout=120) as c:
        yield c


def check_cases(cluster, cases):
    """Run (cfg, skew) cases forward + backward on the ranks in one round trip; compare each with
    the reference: output, every gradient, routing tables and the trace's counts."""
    P = cluster.world_size
    results = cluster.run(step_many, [(cfg, N, skew, True, True) for cfg, skew in cases])  # [P][case]
    for i, (cfg, skew) in enumerate(cases):
        parts = [results[r][i] for r in range(P)]
        got = gather_tensors(parts)
        y_ref, grads_ref, info = reference_step(cfg, P, N, True, skew)
        where = f"P={P} {cfg} skew={skew}"
        assert grads_ref.keys() == {k for k in got if k != "y"}, where
        # relative to the tensor's scale: ranks sum gradients in another order than one process does
        for name, ref, tol in [("y", y_ref, 1e-5), *((n, r, 1e-4) for n, r in grads_ref.items())]:
            err = float((got[name] - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)
            assert got[name].shape == ref.shape and err <= tol, f"{name} differs by {err:.1e} (relative): {where}"
        for key in ("chosen", "used", "slot"):
            ours = torch.cat([torch.from_numpy(getattr(tr, key)) for tr, _ in parts])
            assert torch.equal(ours, info[key]), f"{key} differs: {where}"
        from moe_lab.trace import StepTrace

        trace = StepTrace.merge([tr for tr, _ in parts])
        assert np.array_equal(trace.kept, info["kept"].numpy()) and np.array_equal(trace.dropped, info["dropped"].numpy())
        assert np.array_equal(trace.experts_per_token.reshape(-1), info["experts_per_token"].numpy()), where
        assert (trace.router, trace.num_shared, trace.granularity) == (cfg.router, cfg.num_shared, cfg.granularity)
        if cfg.router == "expert_choice":  # balanced by construction: every expert exactly C per source rank
            assert (trace.kept == P * min(trace.capacity, N)).all() and trace.dropped.sum() == 0, where
        once = rows_once_per_rank(trace)  # a token at most once per destination rank
        assert once.sum() <= trace.kept.sum(), where
        if cfg.num_experts == P:  # one expert per rank: a token's experts are on different ranks already
            assert once.sum() == trace.kept.sum(), where


@pytest.mark.timeout(900)  # 30 cases forward + backward; the 8-rank run on a busy 2-core machine is slow
def test_every_variant_equals_the_reference_on_real_ranks(cluster):
    P = cluster.world_size
    cases = []
    for E in (P, 2 * P):
        for name in VARIANTS:
            for dispatch, skew in (("ragged", 0.0), ("padded", 1.0), ("ragged", 1.0)):
                cfg = variant(name, num_experts=E, k=min(2, E), capacity_factor=1.0, dispatch=dispatch,
                              z_alpha=0.001, seed=E + len(name), **SMALL)
                cases.append((cfg, skew))
    check_cases(cluster, cases)


@st.composite
def variant_configs(draw, P):
    E = P * draw(st.sampled_from([1, 2]))
    router = draw(st.sampled_from(["top_k", "expert_choice"]))
    cf = draw(st.sampled_from([0.5, 1.0, 1.25, 2.0] + ([None] if router == "top_k" else [])))
    policy = draw(st.sampled_from(["drop", "overflow"])) if router == "top_k" else "drop"
    cfg = MoEConfig(num_experts=E, k=draw(st.integers(1, min(E, 3))), capacity_factor=cf, policy=policy,
                    priority=draw(st.sampled_from(["position", "score"])), router=router,
                    dispatch=draw(st.sampled_from(["ragged", "padded"])), num_shared=draw(st.integers(0, 2)),
                    aux_alpha=0.01, seed=draw(st.integers(0, 1000)), **SMALL)
    m = draw(st.sampled_from([1, 2, 4]))
    return cfg.fine_grained(m), draw(st.sampled_from([0.0, 0.5, 1.0]))


@pytest.mark.timeout(900)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_variant_configs_equal_the_reference(cluster, data):
    """Random configs, 6 per round trip, including skew 1 and E = 2·P (one cluster per world size)."""
    check_cases(cluster, data.draw(st.lists(variant_configs(cluster.world_size), min_size=6, max_size=6)))


# ---- the chapter's numbers, figures and dashboard ------------------------------------------------
def test_chapter_variants_counts_and_the_router_lab_on_two_real_ranks():
    from moe_lab.viz import experts_per_token, variant_load
    from moe_lab.widgets import RouterLab

    base = MoEConfig(num_experts=4, k=2, capacity_factor=1.25, **SMALL)
    layers = chapter_variants(base, num_shared=1, m=4)
    c = {name: counts(cfg) for name, cfg in layers.items()}
    assert c["fine-grained m=4"]["params"] == c["token choice"]["params"]
    assert c["+ 1 shared"]["flops_per_token"] == c["token choice"]["flops_per_token"] * 3 // 2
    assert c["fine-grained m=4"]["combinations"] == math.comb(16, 8)
    with Cluster(world_size=2, timeout=120) as cluster:
        traces = {name: cluster.step(cfg, tokens_per_rank=32, skew=0.5) for name, cfg in layers.items()}
        s = {name: summarize(tr) for name, tr in traces.items()}
        assert s["expert choice"]["dropped"] == 0 and s["expert choice"]["max_over_mean"] == 1.0
        assert s["+ 1 shared"]["bytes"] == s["token choice"]["bytes"]  # the shared expert moves nothing
        assert s["fine-grained m=4"]["bytes"] > 2 * s["token choice"]["bytes"]  # one row per piece
        assert s["fine-grained m=4"]["bytes_once_per_rank"] < s["fine-grained m=4"]["bytes"]
        load, per_token = variant_load(traces), experts_per_token(traces)
        assert [t.name for t in load.data] == list(layers) == [t.name for t in per_token.data]
        for bar, tr in zip(per_token.data, traces.values()):
            assert sum(bar.customdata) == 2 * 32 and abs(sum(bar.y) - 1) < 1e-9
            assert bar.customdata[0] == tr.tokens_without_expert

        lab = RouterLab(cluster, cfg=base, tokens_per_rank=32, skew=0.5)
        assert lab.trace.router == "top_k" and lab.steps_run == 1
        before = lab.figures["experts"].data[0].y
        lab.controls["router"].value = "expert_choice"
        assert lab.trace.router == "expert_choice" and lab.steps_run == 2 and lab.trace.dropped.sum() == 0
        assert lab.figures["experts"].data[0].y != before  # the figure follows the step
        lab.controls["num_shared"].value = 2
        lab.controls["granularity"].value = 4
        assert (lab.trace.num_shared, lab.trace.granularity, lab.trace.num_experts) == (8, 4, 16)
        assert "no routed expert" in lab.status.value and lab.error is None

        # the buffer figure counts only real drops: an expert-choice "not chosen" is not a drop
        from moe_lab.viz import alltoall_buffers

        ec = traces["expert choice"]
        assert not ec.dropped_at(0).any() and (ec.used[0] < 0).any()
        for t in range(32):  # a token's path lists the experts that picked it, and only those
            hops = ec.hops(1, t)
            assert [h["expert"] for h in hops] == [e for e in ec.used[1, t] if e >= 0]
            assert len(hops) == ec.experts_per_token[1, t] and not any(h["dropped"] for h in hops)
        titles = [a.text for a in alltoall_buffers(ec).layout.annotations if "dropped" in (a.text or "")]
        assert len(titles) == 2 and all(t.endswith("dropped 0") for t in titles), titles
        tc = traces["token choice"]
        assert int(tc.dropped_at(0).sum()) == int((tc.used[0] < 0).sum())

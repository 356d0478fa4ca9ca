"""Routing claims from the chapter and DESIGN.md, as properties over generated routings."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_lab import routing


@st.composite
def routings(draw):
    """Router logits [N, E] drawn to include ties, one-expert collapse and plain noise."""
    E = draw(st.integers(1, 8))
    N = draw(st.integers(1, 40))
    k = draw(st.integers(1, E))
    kind = draw(st.sampled_from(["random", "ties", "collapse", "integers"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "random":
        logits = torch.randn(N, E, generator=g) * 3
    elif kind == "ties":
        logits = torch.zeros(N, E)
    elif kind == "collapse":
        logits = torch.full((N, E), -30.0)
        logits[:, draw(st.integers(0, E - 1))] = 30.0
    else:  # few distinct values: many partial ties
        logits = torch.randint(0, 3, (N, E), generator=g).float()
    cf = draw(st.sampled_from([None, 0.25, 0.5, 1.0, 1.25, 2.0]))
    policy = draw(st.sampled_from(["drop", "overflow"]))
    priority = draw(st.sampled_from(["position", "score"]))
    return logits, k, cf, policy, priority


@settings(max_examples=600, deadline=None)
@given(routings())
def test_assignment_invariants(case):
    logits, k, cf, policy, priority = case
    N, E = logits.shape
    probs, gates, experts = routing.top_k_gating(logits, k)
    C = routing.capacity(N, E, cf, k)
    expert, slot = routing.assign_slots(probs, experts, C, policy, priority)
    kept = expert >= 0
    # kept + dropped = N·k, and dropped entries are marked in both tables
    assert ((slot >= 0) == kept).all()
    assert int(kept.sum()) + int((~kept).sum()) == N * k
    # per-expert slots are unique and < C
    for e in range(E):
        s = slot[expert == e]
        assert len(set(s.tolist())) == s.numel()
        if C is not None:
            assert (s < C).all()
        assert sorted(s.tolist()) == list(range(s.numel()))  # buffers fill from slot 0
    # a token never holds the same expert twice; its k choices are distinct
    for t in range(N):
        used = [e for e in expert[t].tolist() if e >= 0]
        assert len(used) == len(set(used))
        assert len(set(experts[t].tolist())) == k
    if C is None:
        assert kept.all()
    if policy == "drop":
        assert (expert[kept] == experts[kept]).all()  # drop never changes an expert
    else:
        moved = kept & (expert != experts)
        for t, j in moved.nonzero().tolist():
            assert expert[t, j].item() not in experts[t].tolist()  # only to experts it did not choose
    # renormalised gates sum to 1 for k > 1
    if k > 1:
        assert torch.allclose(gates.sum(-1), torch.ones(N), atol=1e-5)


def test_ties_go_to_the_lower_expert_index():
    probs, gates, experts = routing.top_k_gating(torch.zeros(3, 5), 2)
    assert experts.tolist() == [[0, 1]] * 3
    assert torch.allclose(gates, torch.full((3, 2), 0.5))


def test_k1_gate_is_the_router_probability_not_one():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    probs, gates, experts = routing.top_k_gating(logits, 1)
    assert experts.item() == 0 and math.isclose(gates.item(), probs[0, 0].item())
    assert gates.item() < 1


def test_capacity_formula_and_why_k_belongs_in_it():
    assert routing.capacity(512, 8, 1.25) == 80  # the chapter's ceil(cf · N / P)
    assert routing.capacity(512, 8, 1.25, k=2) == 160
    assert routing.capacity(500, 10, 1.1, k=2) == 110
    # 0.1 * 3 * 10 / 1 is 3.0000000000000004 in floating point: ceil would give 4 slots for 3 tokens' worth
    assert 0.1 * 3 * 10 / 1 > 3
    assert routing.capacity(10, 1, 0.1, k=3) == 3
    assert routing.capacity(100, 1, 0.2, k=3) == 60  # 60.00000000000001
    assert routing.capacity(10, 8, 1.0) == 2
    assert routing.capacity(10, 8, None) is None
    # perfectly balanced top-2 routing: 8 tokens, 4 experts, each expert chosen 4 times
    experts = torch.tensor([[0, 1], [2, 3]] * 4)
    probs = torch.full((8, 4), 0.25)
    chapter_C = routing.capacity(8, 4, 1.0)  # 2: forgets k
    _, slot = routing.assign_slots(probs, experts, chapter_C)
    assert (slot < 0).float().mean().item() == 0.5  # half the traffic dropped
    _, slot = routing.assign_slots(probs, experts, routing.capacity(8, 4, 1.0, k=2))
    assert (slot >= 0).all()


def test_first_choices_fill_buffers_first():
    # token 0 wants (E1, E0); token 1 wants (E0, E1); C = 1: token 1's first choice wins E0
    experts = torch.tensor([[1, 0], [0, 1]])
    probs = torch.tensor([[0.4, 0.6], [0.6, 0.4]])
    expert, slot = routing.assign_slots(probs, experts, 1)
    assert expert.tolist() == [[1, -1], [0, -1]]


def test_score_priority_orders_each_round_by_probability():
    experts = torch.tensor([[0], [0], [0]])
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    _, slot = routing.assign_slots(probs, experts, 2, priority="position")
    assert slot.squeeze(1).tolist() == [0, 1, -1]
    _, slot = routing.assign_slots(probs, experts, 2, priority="score")
    assert slot.squeeze(1).tolist() == [-1, 0, 1]


def test_overflow_moves_to_the_next_preferred_expert_with_room():
    # 3 tokens all prefer E0 (k=1), then E2, then E1; C = 1
    probs = torch.tensor([[0.6, 0.1, 0.3]] * 3)
    experts = torch.tensor([[0], [0], [0]])
    expert, slot = routing.assign_slots(probs, experts, 1, policy="overflow")
    assert expert.squeeze(1).tolist() == [0, 2, 1]
    assert slot.squeeze(1).tolist() == [0, 0, 0]
    expert, slot = routing.assign_slots(probs, experts, 1, policy="drop")
    assert expert.squeeze(1).tolist() == [0, -1, -1]


def test_overflow_skips_the_tokens_own_choices():
    # token 0 chooses (E0, E1); E0 is full from token 1's first choice -> substitute must be E2, not E1
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    experts = torch.tensor([[0, 1], [0, 1]])
    expert, _ = routing.assign_slots(probs, experts, 1, policy="overflow", priority="score")
    # round 0: token 1 (0.6) takes E0, token 0 overflows to E2 (E1 is its own second choice)
    # round 1: tie at 0.3 -> token order: token 0 takes E1; token 1 finds E1 and E2 full: dropped
    assert expert.tolist() == [[2, 1], [0, -1]]


def test_aux_loss_is_alpha_when_routing_is_uniform():
    E, alpha = 8, 0.01
    probs = torch.full((16, E), 1 / E)
    experts = torch.arange(16).remainder(E).unsqueeze(1)
    assert math.isclose(routing.aux_loss(probs, experts, alpha).item(), alpha, rel_tol=1e-6)


def test_aux_loss_value_with_k2_counts_f_over_all_N_k_assignments():
    """f_i is a share of the N·k assignments: with k = 2 uniform routing still gives exactly α,
    and a hand-computed skewed case gives α · E · Σ f_i p_i with f summing to 1."""
    E, alpha, N = 4, 0.1, 8
    probs = torch.full((N, E), 1 / E)
    chosen = torch.tensor([[0, 1], [2, 3]] * (N // 2))  # every expert chosen N·k/E = 4 times
    assert math.isclose(routing.aux_loss(probs, chosen, alpha).item(), alpha, rel_tol=1e-6)
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]] * N)
    chosen = torch.tensor([[0, 1]] * N)  # f = [0.5, 0.5, 0, 0] (16 assignments), p = probs[0]
    expected = alpha * E * (0.5 * 0.4 + 0.5 * 0.3)
    assert math.isclose(routing.aux_loss(probs, chosen, alpha).item(), expected, rel_tol=1e-6)


def test_aux_loss_is_alpha_times_P_when_routing_collapses():
    E, alpha = 8, 0.01
    probs = torch.zeros(16, E)
    probs[:, 3] = 1
    experts = torch.full((16, 1), 3)
    assert math.isclose(routing.aux_loss(probs, experts, alpha).item(), alpha * E, rel_tol=1e-6)


def test_aux_loss_reaches_the_router_gradient():
    torch.manual_seed(0)
    x = torch.randn(32, 16)
    w = torch.randn(16, 4, requires_grad=True)
    probs, _, experts = routing.top_k_gating(x @ w, 2)
    routing.aux_loss(probs, experts, 0.1).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    # the gradient lowers the probability of over-chosen experts: a step along -grad reduces the loss
    with torch.no_grad():
        w2 = w - 1.0 * w.grad
    p2, _, _ = routing.top_k_gating(x @ w2, 2)
    assert routing.aux_loss(p2, experts, 0.1) < routing.aux_loss(probs.detach(), experts, 0.1)


def test_z_loss_penalises_large_logits():
    small, big = torch.zeros(4, 8), torch.full((4, 8), 10.0)
    assert routing.z_loss(big, 1e-3) > routing.z_loss(small, 1e-3) > 0


def test_bias_changes_selection_but_not_gates():
    logits = torch.tensor([[1.0, 0.9, 0.0]])
    probs, gates, experts = routing.top_k_gating(logits, 1, bias=torch.tensor([0.0, 0.5, 0.0]))
    assert experts.item() == 1 and math.isclose(gates.item(), probs[0, 1].item())


def test_rank_within_expert_worked_example():
    assert routing._rank_within_expert(torch.tensor([2, 0, 2, 2, 0]), 3).tolist() == [0, 0, 1, 2, 1]

"""Chapter 7 on real ranks: two nodes, link counts, the emulated slow link, hierarchical AlltoAll,
node-limited routing and chunked overlap — each checked against the single-process reference."""
import time

import numpy as np
import pytest
import torch

from moe_lab import MoEConfig, reference
from moe_lab.cluster import Cluster
from moe_lab.hierarchical import regroup
from moe_lab.node_dedup import nodes_hit
from moe_lab.node_limited import allowed_nodes
from moe_lab.step import reference_step
from moe_lab.topology import LinkModel, classify, expert_node, link_of, node_of
from moe_lab.workload import init_weights, make_tokens
from rank_fns import step_many

N = 16  # tokens per rank
VARIANTS = {
    "flat": dict(),
    "hierarchical": dict(alltoall="hierarchical"),
    "hierarchical padded": dict(alltoall="hierarchical", dispatch="padded"),
    "node-limited M=1": dict(max_nodes=1),
    "chunks=3": dict(chunks=3),
    "chunks=4 M=1 emulated link": dict(chunks=4, max_nodes=1, inter_node=LinkModel(2.0, 50)),
    "node-limited M=1 dropless": dict(max_nodes=1, capacity_factor=None),
    "node_dedup": dict(alltoall="node_dedup"),
    "node_dedup M=1": dict(alltoall="node_dedup", max_nodes=1),
    "node_dedup dropless": dict(alltoall="node_dedup", capacity_factor=None),
    "node_dedup M=1 dropless": dict(alltoall="node_dedup", max_nodes=1, capacity_factor=None),
}
DEDUP = [name for name in VARIANTS if name.startswith("node_dedup")]


# ---- pure pieces, checked on hand-worked cases ------------------------------------------------
def test_ranks_fill_nodes_in_order_and_experts_follow_their_rank():
    assert [node_of(r, 8, 2) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [expert_node(e, 16, 2) for e in (0, 7, 8, 15)] == [0, 0, 1, 1]
    assert link_of(1, 1, 8, 2) is None and link_of(1, 3, 8, 2) == "intra" and link_of(3, 4, 8, 2) == "inter"


def test_a_message_is_a_non_empty_chunk_to_another_rank():
    assert classify(0, [8, 0, 4, 4], 4, 2) == {"intra": [], "inter": [4, 4]}
    assert classify(2, [1, 0, 5, 2], 4, 2) == {"intra": [2], "inter": [1]}


def test_emulated_link_time_is_latency_plus_bytes_over_bandwidth_per_message():
    link = LinkModel(bandwidth_GBps=1.0, latency_us=10.0)
    assert link.seconds([1000, 3000]) == pytest.approx(2 * 10e-6 + 4000 / 1e9)
    assert "emulated" in str(link)


def test_regroup_turns_a_major_chunks_into_b_major_rows():
    assert regroup(torch.tensor([[2, 1], [3, 4]])).tolist() == [0, 1, 3, 4, 5, 2, 6, 7, 8, 9]


def test_send_once_goes_to_every_node_holding_a_kept_expert_of_the_token():
    # E = 4 on 2 nodes (experts 0-1 on node 0): the module docstring's worked example, plus a dropped copy
    used = torch.tensor([[2, 3], [0, 3], [0, 1], [3, -1], [-1, -1]])
    assert nodes_hit(used, 4, 2).tolist() == [[False, True], [True, True], [True, False], [False, True], [False, False]]


def test_node_score_is_the_sum_of_the_top_k_over_m_experts_of_the_node():
    score = torch.tensor([[0.4, 0.0, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25]])
    assert allowed_nodes(score, k=2, max_nodes=1, nodes=2).tolist() == [[False, True], [True, False]]  # tie -> node 0


def _reference(cfg, W, nodes):
    router_w, w_in, w_out = init_weights(cfg)
    x = make_tokens(cfg, W, N, 0.0, router_w)
    return reference.moe_forward(x, router_w, w_in, w_out, cfg, world_size=W, nodes=nodes)


def test_node_limited_tokens_use_at_most_m_nodes_and_m_equal_nodes_changes_nothing():
    W, n = 8, 4
    cfg = MoEConfig(num_experts=16, k=4, capacity_factor=None, max_nodes=2)
    _, info = _reference(cfg, W, n)
    nodes_used = [len({expert_node(e, 16, n) for e in row}) for row in info["chosen"].tolist()]
    assert max(nodes_used) <= 2
    _, free = _reference(cfg.replace(max_nodes=None), W, n)
    assert max(len({expert_node(e, 16, n) for e in row}) for row in free["chosen"].tolist()) > 2  # the limit bites
    y_all, _ = _reference(cfg.replace(max_nodes=n), W, n)
    y_free, _ = _reference(cfg.replace(max_nodes=None), W, n)
    assert torch.equal(y_all, y_free)


# ---- bad input: a clear ValueError before any rank starts -------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    (dict(max_nodes=0), "max_nodes=0"),
    (dict(k=2, max_nodes=3), "k=2 is not divisible by max_nodes=3"),
    (dict(chunks=0), "chunks=0"),
    (dict(chunks=2, dispatch="padded"), "dispatch='ragged'"),
    (dict(alltoall="ring"), "alltoall='ring'"),
    (dict(inter_node=10.0), "LinkModel"),
    (dict(alltoall="node_dedup", dispatch="padded"), "use dispatch='ragged'"),
    (dict(alltoall="node_dedup", chunks=2), "chunks=2 pipelines the flat AlltoAll"),
])
def test_invalid_network_config_is_refused(kwargs, words):
    with pytest.raises(ValueError) as err:
        MoEConfig(**kwargs)
    assert words in str(err.value)


@pytest.mark.parametrize("kwargs, words", [(dict(bandwidth_GBps=0), "bandwidth_GBps=0"),
                                           (dict(bandwidth_GBps=1, latency_us=-1), "latency_us=-1")])
def test_invalid_link_model_is_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LinkModel(**kwargs)


def test_nodes_must_divide_the_world_size_before_any_process_starts():
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="nodes=3 does not divide world_size=8"):
        Cluster(world_size=8, nodes=3)
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("cfg, tokens, words", [
    (MoEConfig(num_experts=4, k=2, max_nodes=2), 8, "max_nodes=2 but the cluster has only nodes=1"),
    (MoEConfig(num_experts=4, k=2, chunks=9), 8, "chunks=9 but only tokens_per_rank=8"),
])
def test_step_settings_that_need_the_cluster_shape_fail_before_ranks_start(cfg, tokens, words):
    with Cluster(world_size=4, start=False) as c:
        with pytest.raises(ValueError, match=words):
            c.step(cfg, tokens_per_rank=tokens)
        assert not c.running


def test_reference_refuses_more_nodes_per_token_than_the_cluster_has():
    with pytest.raises(ValueError, match="max_nodes=2 but the cluster has only nodes=1"):
        _reference(MoEConfig(num_experts=4, k=2, max_nodes=2), 4, 1)


# ---- the real ranks -----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[4, 8])
def two_nodes(request):
    W = request.param
    cases = {name: MoEConfig(**{**dict(num_experts=2 * W, k=2, capacity_factor=1.0, z_alpha=0.001), **kw})
             for name, kw in VARIANTS.items()}
    with Cluster(world_size=W, nodes=2, timeout=120) as c:
        results = c.run(step_many, [(cfg, N, 0.0, True, True) for cfg in cases.values()])
    out = {}
    for i, (name, cfg) in enumerate(cases.items()):
        parts = [results[r][i] for r in range(W)]
        from moe_lab.trace import StepTrace
        out[name] = dict(cfg=cfg, trace=StepTrace.merge([p[0] for p in parts]),
                         y=torch.cat([t["y"] for _, t in parts]),
                         x_grad=torch.cat([t["x_grad"] for _, t in parts]),
                         router_grad=parts[0][1]["router_grad"],
                         w_in_grad=torch.cat([t["w_in_grad"] for _, t in parts]),
                         w_out_grad=torch.cat([t["w_out_grad"] for _, t in parts]))
    return W, out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_on_two_nodes_equals_the_reference(two_nodes, name):
    W, runs = two_nodes
    run = runs[name]
    y_ref, grads_ref, info = reference_step(run["cfg"], W, N, True, nodes=2)
    torch.testing.assert_close(run["y"], y_ref, rtol=0, atol=1e-5)
    for g, ref in grads_ref.items():
        torch.testing.assert_close(run[g], ref, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} {g}: {m}")
    assert np.array_equal(run["trace"].used.reshape(-1, 2), info["used"].numpy())


@pytest.mark.parametrize("name", ["hierarchical", "hierarchical padded", "chunks=3"])
def test_hierarchical_and_chunked_are_bit_identical_to_flat(two_nodes, name):
    """Same rows, same experts: outputs (and the tokens' gradients) are bit for bit the flat ones.
    Chunks sum an expert's weight gradient chunk by chunk: equal up to summation order."""
    _, runs = two_nodes
    for key in ("y", "x_grad", "w_in_grad", "w_out_grad"):
        if name.startswith("chunks") and key.startswith("w_"):
            torch.testing.assert_close(runs[name][key], runs["flat"][key], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(runs[name][key], runs["flat"][key]), f"{name}: {key} differs from flat"


def test_flat_link_counts_follow_the_send_matrix(two_nodes):
    """Flat: rank i sends one count message to every other rank, its non-empty dispatch chunks
    (send_counts[i, j] rows) and, at combine, the rows it got back (send_counts[j, i])."""
    W, runs = two_nodes
    tr = runs["flat"]["trace"]
    row = tr.d_model * 4
    m = tr.num_experts // W
    for i in range(W):
        want = {"intra": [0, 0], "inter": [0, 0]}  # messages, bytes
        for j in range(W):
            kind = link_of(i, j, W, 2)
            if kind is None:
                continue
            want[kind][0] += 1
            want[kind][1] += m * 8  # the count exchange: m int64 counts to every rank
            for rows in (tr.send_counts[i, j], tr.send_counts[j, i]):  # dispatch, combine
                if rows:
                    want[kind][0] += 1
                    want[kind][1] += int(rows) * row
        for kind in ("intra", "inter"):
            assert tr.link_messages[kind][i] == want[kind][0] and tr.link_bytes[kind][i] == want[kind][1]


def test_hierarchical_sends_fewer_inter_node_messages_and_the_same_inter_node_bytes(two_nodes):
    W, runs = two_nodes
    flat, hier = runs["flat"]["trace"], runs["hierarchical"]["trace"]
    # counts, dispatch, combine: one inter-node message each (n - 1 = 1) per rank at most
    assert hier.link_messages["inter"].max() <= 3
    assert hier.link_messages["inter"].sum() < flat.link_messages["inter"].sum()
    assert hier.link_bytes["inter"].sum() == flat.link_bytes["inter"].sum()
    # per collective: only the inter-node stages cross nodes, one message per rank at most
    for name, c in hier.link_per_collective.items():
        assert c["inter_messages"].max() <= (1 if "stage 2" in name else 0), name
    per = flat.link_per_collective
    assert sum(c["inter_bytes"].sum() for c in per.values()) == flat.link_bytes["inter"].sum()


def test_node_limited_m1_sends_each_token_to_one_node(two_nodes):
    W, runs = two_nodes
    tr = runs["node-limited M=1"]["trace"]
    nodes = np.vectorize(lambda e: expert_node(e, tr.num_experts, 2))(tr.chosen)  # [W, N, k]
    assert (nodes == nodes[..., :1]).all()


def _token_node_pairs(used, W, N, E, nodes=2):
    """From the routing tables on one process: per source rank, how many (token, remote node)
    pairs it has (send once) and how many (token, remote expert) copies (one row per copy)."""
    pairs, copies = [0] * W, [0] * W
    for i, row in enumerate(used.tolist()):
        src = i // N
        home = node_of(src, W, nodes)
        remote = [expert_node(e, E, nodes) for e in row if e >= 0 and expert_node(e, E, nodes) != home]
        pairs[src] += len(set(remote))
        copies[src] += len(remote)
    return pairs, copies


@pytest.mark.parametrize("name", DEDUP)
def test_send_once_crosses_nodes_once_per_token_and_remote_node(two_nodes, name):
    """Rows counted on the ranks = (token, remote node) pairs of the routing, exactly: the token, its
    routing row (k gates + k ids) and, back, one summed row per (token, node); nothing else crosses
    but one count per peer."""
    W, runs = two_nodes
    cfg, tr = runs[name]["cfg"], runs[name]["trace"]
    _, _, info = reference_step(cfg, W, N, False, nodes=2)
    pairs, copies = _token_node_pairs(info["used"], W, N, cfg.num_experts)
    row, meta_row = cfg.d_model * 4, 2 * cfg.k * 4
    per = tr.link_per_collective
    assert per["dispatch (once per node, inter-node)"]["inter_bytes"].tolist() == [p * row for p in pairs]
    assert per["dispatch metadata (gates, expert ids)"]["inter_bytes"].tolist() == [p * meta_row for p in pairs]
    # rank (b, l) sends back what its peer (a, l) sent it: with 2 nodes, the peer is rank (r + G) % W
    G = W // 2
    assert per["combine (once per node, inter-node)"]["inter_bytes"].tolist() == [pairs[(r + G) % W] * row for r in range(W)]
    counts = per["all_to_all (counts, inter-node)"]["inter_bytes"].tolist()
    assert counts == [8] * W  # one int64 to the one peer on the other node
    for cname, c in per.items():
        if "intra-node" in cname:
            assert c["inter_bytes"].sum() == 0, cname
    assert tr.link_bytes["inter"].tolist() == [(p * (row + meta_row) + pairs[(r + G) % W] * row + 8)
                                               for r, p in enumerate(pairs)]
    assert tr.link_messages["inter"].max() <= 4  # counts, rows, metadata, combine: one message each to one peer
    assert sum(pairs) <= sum(copies)
    if name == "node_dedup M=1 dropless":  # one node per token, nothing dropped: a remote token has both copies there
        assert sum(copies) == 2 * sum(pairs) > 0


def test_send_once_with_node_limited_routing_halves_the_rows_crossing(two_nodes):
    """k = 2, 2 nodes, the same routing (M = 1, dropless): the per-copy AlltoAll sends both copies of a
    remote token over the network, send once sends the token once — exactly half the rows, each way."""
    _, runs = two_nodes
    per_copy = runs["node-limited M=1 dropless"]["trace"].link_per_collective["all_to_all"]["inter_bytes"].sum()  # dispatch + combine
    once = runs["node_dedup M=1 dropless"]["trace"].link_per_collective
    there = once["dispatch (once per node, inter-node)"]["inter_bytes"].sum()
    back = once["combine (once per node, inter-node)"]["inter_bytes"].sum()
    assert there == back and per_copy == 4 * there > 0


def test_overlap_timeline_has_dispatch_of_the_next_chunk_in_flight_while_experts_run(two_nodes):
    W, runs = two_nodes
    tl = runs["chunks=3"]["trace"].timeline
    for r in range(W):
        ev = [e for e in tl if e["rank"] == r]
        experts = {e["chunk"]: e for e in ev if e["phase"] == "experts"}
        issued = {e["chunk"]: e for e in ev if e["phase"] == "dispatch" and e["kind"] == "comm"}
        assert sorted(experts) == [0, 1, 2]
        for i in (0, 1):
            assert issued[i + 1]["start"] < experts[i]["start"]  # chunk i+1 was on its way before experts i


def test_emulated_link_makes_the_rank_wait_for_its_inter_node_messages(two_nodes):
    W, runs = two_nodes
    tr = runs["chunks=4 M=1 emulated link"]["trace"]
    link = runs["chunks=4 M=1 emulated link"]["cfg"].inter_node
    waits = [e for e in tr.timeline if e["kind"] == "comm"]
    assert waits
    for r in range(W):
        emulated = tr.link_messages["inter"][r] * link.latency_us * 1e-6 + tr.link_bytes["inter"][r] / (link.bandwidth_GBps * 1e9)
        assert tr.rank_time_s[r] >= emulated  # the step cannot beat its own NIC


# ---- exercise 9: solution full, stub zero, a plausible mistake less than full --------------------
WRONG_NODE_SCORE = '''
def node_limited_experts(probs, k, max_nodes, nodes):
    """A real misconception: score a node by its single best expert, not the sum of its top-(k/M)."""
    N, E = probs.shape
    node_score = probs.view(N, nodes, E // nodes).max(dim=-1).values  # [N, n]
    keep = torch.sort(node_score, dim=-1, descending=True, stable=True).indices[:, :max_nodes]
    allowed = torch.zeros(N, nodes, dtype=torch.bool).scatter_(1, keep, True).repeat_interleave(E // nodes, dim=1)
    return torch.sort(probs.masked_fill(~allowed, float("-inf")), dim=-1, descending=True, stable=True).indices[:, :k]
'''.strip()
WRONG_HIER = '''
def hierarchical_inter_messages(send_counts, nodes):
    """A real misconception: one message per other node, whether or not anything is bound there."""
    return torch.full((send_counts.shape[0],), nodes - 1, dtype=torch.long)
'''.strip()
CALLS_LIBRARY = '''
def node_limited_experts(probs, k, max_nodes, nodes):
    from moe_lab import MoEConfig
    from moe_lab.node_limited import node_limit_bias
    cfg = MoEConfig(num_experts=probs.shape[1], k=k, max_nodes=max_nodes)
    return routing.top_k_gating(probs.log(), k, bias=node_limit_bias(probs.log(), cfg, nodes))[2]
'''.strip()


def test_exercise_9_grades_solution_full_stub_zero_and_mistakes_partially(tmp_path):
    import nbformat

    from moe_lab import grading
    from moe_lab.grading import generate as gen

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    name = "ex9_network.ipynb"
    source = nbformat.read(str(root / "solutions" / name), as_version=4)
    stub = nbformat.read(str(root / "exercises" / name), as_version=4)

    def answered(answers):
        nb = nbformat.from_dict(__import__("copy").deepcopy(stub))
        for cell in nb.cells:
            if gen.grade_id(cell) in answers:
                cell.source = answers[gen.grade_id(cell)]
        return nb

    solution = {gen.grade_id(c): "\n".join(line for line in c.source.splitlines()
                                           if line.strip() not in (gen.BEGIN_SOLUTION, gen.END_SOLUTION))
                for c in source.cells if gen.is_solution_cell(c)}
    subs = {"solved": source, "stub": stub,
            "wrong_score": answered({**solution, "ex9_node_limited_solution": WRONG_NODE_SCORE}),
            "wrong_hier": answered({**solution, "ex9_hier_solution": WRONG_HIER}),
            "library": answered({**solution, "ex9_node_limited_solution": CALLS_LIBRARY})}
    for who, nb in subs.items():
        (tmp_path / who).mkdir()
        nbformat.write(nb, str(tmp_path / who / name))
    results = {__import__("pathlib").Path(r.notebook).parent.name: r
               for r in grading.grade([tmp_path], root / "solutions", cell_timeout=120, notebook_timeout=300, jobs=2)}
    full = results["solved"].max_score
    assert full == 9 and results["solved"].score == full
    assert results["stub"].score == 0
    parts = {w: {p.grade_id: p.points for p in results[w].parts} for w in results}
    assert parts["wrong_score"] == {"ex9_node_limited": 0, "ex9_flat": 2, "ex9_hier": 3}
    assert parts["wrong_hier"] == {"ex9_node_limited": 4, "ex9_flat": 2, "ex9_hier": 0}
    assert parts["library"]["ex9_node_limited"] == 0  # calling the library earns nothing


def test_timeline_and_link_figures_are_drawn_from_the_trace(two_nodes):
    from moe_lab.viz import link_traffic, timeline

    W, runs = two_nodes
    fig = timeline(runs["chunks=4 M=1 emulated link"]["trace"])
    names = {t.name for t in fig.data}
    assert {"experts", "waiting on a collective", "dispatch in flight", "combine in flight"} <= names
    assert "emulated" in fig.layout.title.text
    assert sorted({int(y) for t in fig.data for y in t.y}) == list(range(W))
    bars = link_traffic({n: runs[n]["trace"] for n in ("flat", "hierarchical")})
    inter_msgs = next(t for t in bars.data if t.name == "inter-node" and t.xaxis == "x2")
    assert list(inter_msgs.y) == [runs[n]["trace"].link_messages["inter"].sum() for n in ("flat", "hierarchical")]

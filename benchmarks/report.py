"""The suite's outputs for people: targets, a terminal table with ratios side by side, a figure."""
from __future__ import annotations

TARGETS = (
    # name, section, how to read it, goal, op, unit
    ("persistent step vs respawning ranks", "interactivity", ("ratio", "respawn / persistent step"), 100.0, ">=", "x"),
    ("step round trip, 8 ranks x 512 tokens", "interactivity", ("median", "Cluster.step round trip"), 0.025, "<=", "s"),
    ("slider -> figures updated", "interactivity", ("median", "Playground slider"), 0.050, "<=", "s"),
    ("lab: alpha -> 40 training steps, 8 ranks x 128 tokens", "lab", ("median", "BalancingLab: alpha slider -> 40"),
     2.0, "<=", "s"),
    ("lab: alpha -> first redraw", "lab", ("median", "BalancingLab: alpha slider -> first redraw"), 0.5, "<=", "s"),
    ("vs fairscale, fwd, 512 tokens/rank", "peer", ("ratio", "speedup vs fairscale, fwd, N=512"), 2.0, ">=", "x"),
    ("vs fairscale, fwd+bwd, 512 tokens/rank", "peer", ("ratio", "speedup vs fairscale, fwd+bwd, N=512"), 2.0, ">=", "x"),
    ("vs fairscale, fwd, 2048 tokens/rank", "peer", ("ratio", "speedup vs fairscale, fwd, N=2048"), 15.0, ">=", "x"),
    ("vs fairscale, fwd+bwd, 2048 tokens/rank", "peer", ("ratio", "speedup vs fairscale, fwd+bwd, N=2048"), 15.0, ">=", "x"),
    ("vs fairscale, fwd, 8192 tokens/rank", "peer", ("ratio", "speedup vs fairscale, fwd, N=8192"), 80.0, ">=", "x"),
    ("vs fairscale, fwd+bwd, 8192 tokens/rank", "peer", ("ratio", "speedup vs fairscale, fwd+bwd, N=8192"), 80.0, ">=", "x"),
    ("step / single process, fwd, 8192 tokens/rank", "floor", ("ratio", "step / single process, fwd, N=8192"), 1.5, "<=", "x"),
    ("step / single process, fwd+bwd, 8192 tokens/rank", "floor", ("ratio", "step / single process, fwd+bwd, N=8192"),
     1.5, "<=", "x"),
    ("cold start, Cluster right after import", "startup", ("median", "cold start, prewarm on, Cluster right after"), 1.0,
     "<=", "s"),
    ("cold start, Cluster 3 s after import", "startup", ("median", "cold start, prewarm on, Cluster 3 s after"), 1.0,
     "<=", "s"),
)


def _find(section: dict, how: str, key: str):
    if not section or section.get("status") != "ok":
        return None
    if how == "ratio":
        return next((r["value"] for r in section.get("ratios", []) if r["name"].endswith(key)), None)
    return next((r["median"] for r in section.get("records", []) if r["contender"].startswith(key)), None)


def evaluate_targets(sections: dict, world_size: int) -> list:
    out = []
    for name, sec, (how, key), goal, op, unit in TARGETS:
        value = _find(sections.get(sec), how, key)
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        out.append(dict(name=name, section=sec, measured=value, target=goal, op=op, unit=unit, met=met,
                        note=None if world_size == 8 else f"target is for 8 ranks; measured at {world_size}"))
    return out


# ---- terminal ------------------------------------------------------------------------------------
def _ms(v):
    return "-" if v is None else f"{1e3 * v:.1f}"


def _x(v):
    return "-" if v is None else (f"{v:.0f}x" if v >= 100 else f"{v:.2f}x")


def _ok(rec):
    if "matched_reference" not in rec:
        return "-"
    return ("yes" if rec["matched_reference"] else "NO") + f" ({rec['max_err']:.1e})"


def table(headers, rows) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _target_cell(targets, name):
    t = next((t for t in targets if t["name"] == name), None)
    if t is None or t["measured"] is None:
        return "", ""
    goal = f"{t['op']} {t['target']:g}{'x' if t['unit'] == 'x' else ' s'}"
    return goal, "yes" if t["met"] else "NO"


def _pairs(records, a_prefix, b_prefix, keys):
    """Records of contender a and b with equal params[keys], side by side."""
    a = [r for r in records if r["contender"].startswith(a_prefix)]
    b = {tuple(r["params"].get(k) for k in keys): r for r in records if r["contender"].startswith(b_prefix)}
    return [(r, b.get(tuple(r["params"].get(k) for k in keys))) for r in a]


def render(result: dict) -> str:
    S, T = result["sections"], result["targets"]
    meta = result["meta"]
    out = [f"moe_lab bench ({'quick' if meta['quick'] else 'full'}), {meta['world_size']} ranks, {meta['cores']} cores, "
           f"torch {meta['torch']}, {meta['platform']}, {meta['date']}",
           "times: median [p10 - p90] in ms; every raw sample is in the JSON", ""]
    for name, sec in S.items():
        out.append(f"== {name} ==")
        if sec.get("status") != "ok":
            out += [f"  {sec.get('status')}: {sec.get('reason', '')}".rstrip(), ""]
            continue
        recs = sec.get("records", [])
        if name == "floor":
            rows, threads = [], sorted({r["params"]["threads"] for r in recs if "threads" in r["params"]})
            for o in (r for r in recs if "phases" in r):
                n, mode = o["params"]["tokens_per_rank"], o["params"]["mode"]
                refs = {r["params"]["threads"]: r for r in recs if "threads" in r["params"]
                        and (r["params"]["tokens_per_rank"], r["params"]["mode"]) == (n, mode)}
                best = min(r["median"] for r in refs.values())
                ph = o["phases"]
                goal, met = _target_cell(T, f"step / single process, {mode}, {n} tokens/rank")
                rows.append([n, mode, _ms(o["median"]), *(_ms(refs[t]["median"]) if t in refs else "-" for t in threads),
                             _x(o["median"] / best), goal, met,
                             " ".join(_ms(ph[p]["median_max"]) for p in ("router", "count_exchange", "dispatch", "experts",
                                                                           "combine", "other")), _ok(o)])
            out.append(table(["N/rank", "mode", "ours", *(f"1 proc {t} thr" for t in threads), "ratio", "target", "met?",
                              "max over ranks: router/count/dispatch/experts/combine/other", "matched"], rows))
        elif name == "peer":
            rows = []
            for o, f in _pairs(recs, "moe_lab MoELayer", "fairscale", ("tokens_per_rank", "mode")):
                if "padded" in o["contender"] or f is None:
                    continue
                n, mode = o["params"]["tokens_per_rank"], o["params"]["mode"]
                pad = next((r for r in recs if "padded" in r["contender"] and r["params"] == o["params"]), None)
                goal, met = _target_cell(T, f"vs fairscale, {mode}, {n} tokens/rank")
                ph = o.get("forward_phase_medians_s", {})
                rows.append([n, mode, _ms(o["median"]), _ms(pad and pad["median"]), _ms(f["median"]),
                             _x(f["median"] / o["median"]), _x(pad and f["median"] / pad["median"]), goal, met,
                             " ".join(_ms(ph.get(p)) for p in ("count_exchange", "dispatch", "combine")),
                             _ok(o), _ok(pad) if pad else "-", _ok(f)])
            out.append(table(["N/rank", "mode", "ours", "ours padded", "fairscale", "speedup", "speedup padded", "target",
                              "met?", "ours fwd count/dispatch/combine", "ours matched", "padded matched",
                              "fairscale matched"], rows))
            for c in sec.get("checks", []):
                out.append(f"  N={c['tokens_per_rank']}: compared {c['compared_tokens']} of {c['tokens']} tokens "
                           f"(both choices kept by both); same kept sets: {c['full_sets_equal']}")
            out += [f"  skipped N={s['tokens_per_rank']}: {s['reason']}" for s in sec.get("skipped_sizes", [])]
            for e in sec.get("estimates", []):
                o = next(r for r in recs if r["contender"] == "moe_lab MoELayer" and r["params"]["mode"] == e["mode"]
                         and r["params"]["tokens_per_rank"] == e["tokens_per_rank"])
                goal, met = _target_cell(T, f"vs fairscale, {e['mode']}, {e['tokens_per_rank']} tokens/rank")
                out.append(f"  N={e['tokens_per_rank']} {e['mode']}: ours {_ms(o['median'])} ms measured, fairscale "
                           f"~{_ms(e['fairscale_estimate_s'])} ms estimated (x{e['growth_per_doubling']:.2f} per doubling "
                           f"of N) -> speedup ~{_x(e['fairscale_estimate_s'] / o['median'])} (target {goal}: {met})")
        elif name == "ragged_vs_padded":
            rows = []
            for g, p in _pairs(recs, "ragged", "padded", ("capacity_factor",)):
                ident = next(i for i in sec["bytes_identity"] if i["capacity_factor"] == g["params"]["capacity_factor"])
                rows.append([g["params"]["capacity_factor"], _ms(g["median"]), _ms(p["median"]), _x(p["median"] / g["median"]),
                             g["bytes_sent"], p["bytes_sent"], f"{ident['ragged_bytes_x_padded_over_used']:.0f}",
                             "yes" if ident["equal"] else "NO", g["dropped"], _ok(g), _ok(p)])
            out.append(table(["cf", "ragged", "padded", "time ratio", "ragged B", "padded B", "ragged B x pad/used",
                              "identity", "dropped", "ragged matched", "padded matched"], rows))
            gr = sec["growth"]
            out.append(f"  cf {1:g} -> 4: ragged time x{gr['ragged']['time_cf_max_over_cf_min']:.2f}, bytes "
                       f"x{gr['ragged']['bytes_cf_max_over_cf_min']:.2f}; padded time x{gr['padded']['time_cf_max_over_cf_min']:.2f}, "
                       f"bytes x{gr['padded']['bytes_cf_max_over_cf_min']:.2f}")
        elif name == "variants":
            from .variants import TABLE_HEADERS, table_rows

            out.append(table(TABLE_HEADERS, table_rows(sec)))
        elif name == "transport":
            rows = [[r["params"].get("tokens_per_rank", "-"), r["contender"], f"{_ms(r['median'])} [{_ms(r['p10'])} - {_ms(r['p90'])}]",
                     "-" if r.get("aggregate_GB_per_s") is None else f"{r['aggregate_GB_per_s']:.2f}", _ok(r)] for r in recs]
            out.append(table(["N/rank", "what", "time", "GB/s (all ranks)", "matched"], rows))
        else:
            rows = [[r["contender"], f"{_ms(r['median'])} [{_ms(r['p10'])} - {_ms(r['p90'])}]", r["n"], _ok(r)] for r in recs]
            out.append(table(["contender", "time", "n", "matched"], rows))
        for r in recs:
            if "redraw_median_s" in r:
                out.append(f"  slider: step {_ms(float(sorted(r['step_s'])[len(r['step_s']) // 2]))} ms + redraw "
                           f"{_ms(r['redraw_median_s'])} ms (medians); figures updated every time: {all(r['figures_updated'])}")
        if name not in ("floor", "peer", "ragged_vs_padded"):
            for r in sec.get("ratios", []):
                out.append(f"  {r['name']}: {_x(r['value'])}")
        out.append("")
    out.append("== targets ==")
    rows = [[t["name"], "-" if t["measured"] is None else (_x(t["measured"]) if t["unit"] == "x" else f"{1e3 * t['measured']:.1f} ms"),
             f"{t['op']} {t['target']:g}" + ("x" if t["unit"] == "x" else " s"),
             "not measured" if t["met"] is None else ("yes" if t["met"] else "NO")] for t in T]
    out.append(table(["target", "measured", "target", "met?"], rows))
    notes = sorted({t["note"] for t in T if t.get("note")})
    out += [f"  note: {n}" for n in notes]
    return "\n".join(out)


# ---- figure ----------------------------------------------------------------------------------------
def figure(result: dict):
    """Four panels: speedups against targets, distributed / single-process, ragged vs padded, phases."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    S, T = result["sections"], result["targets"]
    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "speedups (higher is better; diamonds = targets)", "N-rank step / single process (lower is better)",
        "padded / ragged, by capacity factor", "where a rank's step goes (max over ranks, ms)"))
    names, values, goals = [], [], []
    for t in T:
        if t["unit"] == "x" and t["op"] == ">=" and t["measured"] is not None:
            names.append(t["name"])
            values.append(t["measured"])
            goals.append(t["target"])
    for r in (S.get("peer", {}).get("ratios", []) if S.get("peer", {}).get("status") == "ok" else []):
        label = r["name"].replace("speedup ", "")
        if r["value"] is not None and not any(label.endswith(n.split(", ", 1)[-1]) for n in names):
            names.append(label)
            values.append(r["value"])
            goals.append(None)
    fig.add_bar(x=names, y=values, name="measured", row=1, col=1)
    fig.add_scatter(x=names, y=goals, mode="markers", marker=dict(symbol="diamond", size=11, color="black"),
                    name="target", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    floor = S.get("floor", {})
    if floor.get("status") == "ok":
        for mode in ("fwd", "fwd+bwd"):
            rs = [r for r in floor["ratios"] if r["params"]["mode"] == mode]
            fig.add_scatter(x=[r["params"]["tokens_per_rank"] for r in rs], y=[r["value"] for r in rs], name=mode,
                            mode="lines+markers", row=1, col=2)
        fig.add_hline(y=1.5, line_dash="dash", annotation_text="target 1.5", row=1, col=2)
        for r in (r for r in floor["records"] if "phases" in r):
            label = f"{r['params']['tokens_per_rank']} {r['params']['mode']}"
            for ph in ("router", "count_exchange", "dispatch", "experts", "combine", "other"):
                fig.add_bar(x=[label], y=[1e3 * r["phases"][ph]["median_max"]], name=ph, legendgroup=ph,
                            showlegend=label.startswith(str(floor["records"][0]["params"]["tokens_per_rank"])) and
                            r["params"]["mode"] == "fwd", row=2, col=2)
        fig.update_xaxes(type="log", title_text="tokens per rank", row=1, col=2)
    rvp = S.get("ragged_vs_padded", {})
    if rvp.get("status") == "ok":
        for kind in ("time", "bytes"):
            rs = [r for r in rvp["ratios"] if r["name"].startswith(f"padded / ragged {kind}")]
            fig.add_scatter(x=[r["params"]["capacity_factor"] for r in rs], y=[r["value"] for r in rs],
                            mode="lines+markers", name=f"padded / ragged {kind}", row=2, col=1)
    fig.update_layout(barmode="stack", height=800, width=1200, title=f"moe_lab bench, {result['meta']['world_size']} ranks, "
                      f"{result['meta']['cores']} cores ({'quick' if result['meta']['quick'] else 'full'})")
    return fig

"""The torchtitan peer: torchtitan 0.3.0's expert-parallel dispatch and combine against ours.

torchtitan's whole MoE layer cannot run here (benchmarks/README.md says exactly why: its token
dispatcher module imports triton kernels at import time, its grouped experts call
`torch._grouped_mm`, and its default SPMD backend expects a DeviceMesh-typed model). What can run
on CPU/gloo, unchanged, is the part expert parallelism is about: `AllToAllTokenDispatcher`
(`torchtitan/models/common/token_dispatcher.py`), whose `dispatch` sorts the assignments by
expert, exchanges counts, sends the rows with a functional-collective AlltoAll over a DeviceMesh
and permutes them rank-major -> expert-major, and whose `combine` undoes that, applies the gates
and scatter-adds the copies back. So both contenders route with the same code (our
`routing.route_block`, dropless, top-2), run the same local experts on the same weights and
tokens, and differ only in dispatch and combine:
  ours    moe_lab.MoELayer.forward (routing, count exchange, ragged AlltoAll, experts, combine)
  titan   routing.route_block, then torchtitan's dispatch -> the same experts -> its combine
Outputs are compared token by token first (dropless: both keep every assignment).

To import the dispatcher without a GPU toolchain, the rank puts a stand-in `triton` module in
sys.modules when triton is missing: the dispatcher only imports the module that defines the
kernels, and this path never calls them.
"""
from __future__ import annotations

import importlib.util
import sys
import time
import types

import torch
import torch.distributed as dist

from .common import check, ratio, record

SIZES = (512, 2048, 8192)
OURS, THEIRS = "moe_lab MoELayer (dropless)", "torchtitan 0.3.0 AllToAllTokenDispatcher + same experts"


def available() -> str | None:
    """torchtitan's version, or None when it is not installed."""
    if importlib.util.find_spec("torchtitan") is None:
        return None
    try:
        from importlib.metadata import version

        return version("torchtitan")
    except Exception:  # noqa: BLE001
        return "unknown"


def titan_config(world_size: int):
    from moe_lab.config import MoEConfig

    return MoEConfig(num_experts=world_size, k=2, capacity_factor=None, d_model=64, d_hidden=256,
                     normalize_gates=True, aux_alpha=0.01, z_alpha=0.0)


def _stand_in_triton() -> list:
    """A `triton` whose decorators return the function and whose attributes are placeholders, put in
    sys.modules only while torchtitan's dispatcher is imported (torch's own modules that look for
    triton are imported first, so they see none). Returns the names to take out again."""
    if importlib.util.find_spec("triton") is not None or "triton" in sys.modules:
        return []
    import torch._dynamo  # noqa: F401 - it checks for triton at import: let it find none
    import torch.distributed.device_mesh  # noqa: F401
    import torch._dynamo.repro.after_dynamo  # noqa: F401 - torch.compile's backends, imported by torchtitan
    import torch._inductor.codecache  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401
    import torch.nn.attention.varlen  # noqa: F401

    def anything(*args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else anything

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return anything

    names = ("triton", "triton.language", "triton.runtime", "triton.tools")
    for name in names:
        sys.modules[name] = _Module(name)
        if "." in name:
            setattr(sys.modules["triton"], name.split(".", 1)[1], sys.modules[name])
    return list(names)


# ---- on the ranks --------------------------------------------------------------------------------
def _setup(ctx, cfg, N: int):
    cache = ctx.state("bench.titan")
    key = (cfg, N)
    if key in cache:
        return cache[key]
    stand_in = _stand_in_triton()
    try:
        from torchtitan.distributed.utils import set_spmd_backend
        from torchtitan.models.common.token_dispatcher import AllToAllTokenDispatcher
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    from torch.distributed.device_mesh import init_device_mesh

    from moe_lab.dispatch import make_local_experts
    from moe_lab.layer import MoELayer
    from moe_lab.workload import init_weights, make_tokens

    set_spmd_backend("none")  # plain process groups: its functional-collective path
    P, r = ctx.world_size, ctx.rank
    weights = init_weights(cfg)
    ours = MoELayer(cfg, ctx.group, ctx.device).load_global_weights(*weights)
    mesh = cache.get("mesh") or init_device_mesh(ctx.device.type, (P,), mesh_dim_names=("ep",))
    disp = AllToAllTokenDispatcher(AllToAllTokenDispatcher.Config(num_experts=cfg.num_experts, top_k=cfg.k))
    disp.wire_meshes(ep_mesh=mesh)
    x = make_tokens(cfg, P, N, 0.0, weights[0])[r * N:(r + 1) * N].to(ctx.device)
    experts = make_local_experts(ours.w_in, ours.w_out)
    cache.clear()
    cache["mesh"] = mesh
    cache[key] = (ours, disp, experts, x)
    return cache[key]


def _titan_forward(ours, disp, experts, x, cfg):
    from moe_lab.routing import route_block

    r = route_block(x, ours.router_w, cfg)
    counts = torch.bincount(r["chosen"].reshape(-1), minlength=cfg.num_experts)  # [E]
    # its dispatch views the tables flat: hand it contiguous [N, k] copies (top-k columns of a sort are not)
    routed, per_local, meta = disp.dispatch(x, r["gates"].contiguous(), r["chosen"].contiguous(), counts)
    out = torch.cat([experts(e, rows) for e, rows in enumerate(routed.split(per_local.tolist()))])
    return disp.combine(out, meta, x)


def titan_step(ctx, cfg, N: int, which: str, check_only: bool = False):
    """One forward of 'ours' or 'titan' on this rank, timed after a barrier; with check_only, y."""
    ours, disp, experts, x = _setup(ctx, cfg, N)
    with torch.no_grad():
        if check_only:
            return dict(ours=ours(x)[0].cpu(), titan=_titan_forward(ours, disp, experts, x, cfg).cpu())
        dist.barrier(group=ctx.group)
        t0 = time.perf_counter()
        if which == "ours":
            ours(x)
        else:
            _titan_forward(ours, disp, experts, x, cfg)
        return time.perf_counter() - t0


# ---- in the parent: the section ----------------------------------------------------------------
def section_titan(bc) -> dict:
    version = available()
    if version is None:
        return dict(status="skipped", reason="torchtitan is not installed; pip install torchtitan==0.3.0 --no-deps "
                    "spmd_types==0.2.3 tyro einops (benchmarks/README.md says why not its full dependency list)")
    from moe_lab.step import reference_step

    from .common import rel_err

    P, cluster = bc.world_size, bc.cluster
    cfg = titan_config(P)
    sizes = bc.sizes(SIZES)
    n = bc.reps(3, 8)
    bar = bc.progress(len(sizes) * (2 * n + 1), "titan")
    records, ratios, checks = [], [], []
    for N in sizes:
        got = cluster.run(titan_step, cfg, N, "", True)
        y_ref = reference_step(cfg, P, N, False)[0]
        errors = {"ours_vs_reference": rel_err(torch.cat([g["ours"] for g in got]), y_ref),
                  "titan_vs_reference": rel_err(torch.cat([g["titan"] for g in got]), y_ref)}
        checks.append(dict(tokens_per_rank=N, compared_tokens=P * N, **errors))
        ours_check = check({"y": errors["ours_vs_reference"]})
        titan_check = check({"y": errors["titan_vs_reference"]})
        for which in ("ours", "titan"):
            cluster.run(titan_step, cfg, N, which)
        bar.update(1)
        t = {"ours": [], "titan": []}
        for rep in range(n):
            for which in (("ours", "titan") if rep % 2 == 0 else ("titan", "ours")):
                t[which].append(max(cluster.run(titan_step, cfg, N, which)))
                bar.update(1)
        params = dict(world_size=P, tokens_per_rank=N, mode="fwd")
        rec_o = record(OURS, t["ours"], params, **ours_check)
        rec_t = record(THEIRS, t["titan"], params, **titan_check)
        records += [rec_o, rec_t]
        ratios.append(dict(name=f"speedup vs torchtitan dispatch/combine, fwd, N={N}", params=params,
                           value=ratio(rec_t, rec_o), meaning="torchtitan path time / moe_lab time (higher = ours faster)"))
    bar.close()
    return dict(status="ok", version=version, config=cfg.to_dict(), records=records, ratios=ratios, checks=checks, notes=[
        f"torchtitan {version}: its AllToAllTokenDispatcher (dispatch + combine, functional-collective AlltoAll over a "
        "1-D DeviceMesh on gloo), with our routing and our local experts around it; its full MoE module does not run "
        "on CPU/gloo here (benchmarks/README.md)",
        "time = max over ranks of one forward, after a barrier; dropless top-2, so both keep every assignment and "
        "both outputs are compared with the single-process reference on every token"])

"""MoELayer: router -> count exchange -> AlltoAll dispatch -> local experts -> AlltoAll combine.

The expert-parallel layer of GShard (arXiv 2006.16668) and Switch Transformer (arXiv 2101.03961);
ragged (dropless) buffers as in MegaBlocks (arXiv 2211.15841). One instance per rank. Every rank holds the (replicated) router and only its own m = E / P
experts; tokens travel to the experts, never the other way round.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from . import routing
from .allreduce import all_reduce
from .comm import note
from .config import MoEConfig
from .device import synchronizer
from .dispatch import make_local_experts, padded_exchange, ragged_exchange, send_order
from .expert_choice import route_fn
from .hierarchical import HierarchicalAlltoAll
from .links import LinkMeter
from .node_dedup import node_dedup_exchange
from .overlap import pipelined_exchange
from .experts import tp_shard
from .shared_experts import SharedExperts, check_shared
from .trace import RankTrace


class MoELayer(nn.Module):
    """An expert-parallel MoE layer on a process group (the default group if None).

    forward(x [N, d]) -> (y [N, d], RankTrace). After a forward, `aux_loss` and `z_loss` hold
    this rank's differentiable balancing losses (add them to the loss you backpropagate).
    The router is replicated: call `sync_router_grads()` after backward so every rank applies
    the same update (the experts need no sync, the AlltoAll backward already brings them the
    gradient of every rank's tokens).
    """

    def __init__(self, cfg: MoEConfig, group=None, device=None, tp_group=None, router_group=None, nodes: int = 1):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("MoELayer needs torch.distributed: run it inside Cluster.run or torchrun")
        self.cfg, self.group = cfg, group if group is not None else dist.group.WORLD
        self.P, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        cfg.check_nodes(self.P, nodes)
        self.nodes = nodes  # the EP group's ranks split over `nodes` nodes (moe_lab.topology)
        # optional tensor parallelism inside each expert (moe_lab.mesh): hidden dim split over TP
        self.tp_group = tp_group
        self.tp_size = dist.get_world_size(tp_group) if tp_group is not None else 1
        self.tp_rank = dist.get_rank(tp_group) if tp_group is not None else 0
        self.router_group = router_group if router_group is not None else self.group  # replicas of the router
        m = cfg.experts_per_rank(self.P)
        d, E = cfg.d_model, cfg.num_experts
        if cfg.d_hidden % self.tp_size:
            raise ValueError(f"d_hidden={cfg.d_hidden} cannot be split over tp_size={self.tp_size}")
        h = cfg.d_hidden // self.tp_size
        self.first_expert = self.rank * m  # this rank holds experts first_expert .. first_expert+m-1
        self.router_w = nn.Parameter(torch.zeros(d, E, device=device))  # [d, E]
        self.w_in = nn.Parameter(torch.zeros(m, d, h, device=device))  # [m, d, h]
        self.w_out = nn.Parameter(torch.zeros(m, h, d, device=device))  # [m, h, d]
        # aux-loss-free balancing: a per-expert bias on the top-k *selection* only (not a parameter)
        self.register_buffer("select_bias", torch.zeros(E, device=device))
        # shared experts (chapter 6): replicated on every rank, applied to this rank's own tokens
        self.shared = SharedExperts(cfg.num_shared, d, cfg.d_hidden, device) if cfg.num_shared else None
        self.aux_loss = self.z_loss = None

    @torch.no_grad()
    def load_global_weights(self, router_w, w_in, w_out, shared=None):
        """Keep the router and this rank's own slices of the global [E, ...] expert weights;
        `shared=(w_in [S, d, h], w_out [S, h, d])` are the shared experts, kept whole."""
        check_shared(shared, self.cfg)
        if shared is not None:
            self.shared.w_in.copy_(shared[0])
            self.shared.w_out.copy_(shared[1])
        m = self.w_in.shape[0]
        w_in, w_out = w_in[self.first_expert : self.first_expert + m], w_out[self.first_expert : self.first_expert + m]
        if self.tp_group is not None:
            w_in, w_out = tp_shard(w_in, w_out, self.tp_rank, self.tp_size)
        self.router_w.copy_(router_w)
        self.w_in.copy_(w_in)
        self.w_out.copy_(w_out)
        return self

    def sync_router_grads(self, op=dist.ReduceOp.SUM):
        if self.router_w.grad is not None:
            note("all_reduce", "router", self.router_w.grad)
            all_reduce(self.router_w.grad, op, self.router_group)
        if self.shared is not None:  # replicated like the router: same sync
            self.shared.sync_grads(self.router_group, op)

    def forward(self, x: torch.Tensor):
        cfg = self.cfg
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != cfg.d_model:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a [N, d_model={cfg.d_model}] tensor, got {shape}")
        if x.dtype != self.router_w.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the layer's weights are {self.router_w.dtype}")
        if x.device != self.router_w.device:
            raise ValueError(f"x is on {x.device} but this rank's layer is on {self.router_w.device}; "
                             f"move the tokens first: layer(x.to(ctx.device))")
        cfg.check_chunks(x.shape[0])
        times, timer = _timer(x.device)
        meter = LinkMeter(self.group, self.nodes, cfg.inter_node, timer)  # counts links, emulates, timestamps
        sync = synchronizer(x.device)
        sync()
        t0 = time.perf_counter()
        N, E, k = x.shape[0], cfg.num_experts, cfg.k
        with meter.phase("router"):
            bias = self.select_bias if self.select_bias.any() else None
            route = route_fn(cfg) if cfg.max_nodes is None else partial(routing.route_block, nodes=self.nodes)
            r = route(x, self.router_w, cfg, bias)  # gates, chosen, used, slot: [N, k] ([N, E]: expert choice)
            k = r["used"].shape[1]
            order, counts = send_order(r["used"], r["slot"], E)  # [S], [E]
        local_experts = make_local_experts(self.w_in, self.w_out, self.tp_group)
        S = None
        if cfg.alltoall == "node_dedup":  # chapter 7: one row per (token, node), summed there (moe_lab.node_dedup)
            y = node_dedup_exchange(x, r["gates"], r["used"], local_experts, meter, self.nodes, E)  # [N, d]
        elif cfg.chunks > 1:  # chapter 7: pipelined chunks (moe_lab.overlap)
            out = pipelined_exchange(x, r["used"], r["slot"], k, E, local_experts, meter, cfg.chunks)  # [N*k, d]
            for name, s in meter.waited.items():
                times[name] = times.get(name, 0.0) + s
        else:
            net = HierarchicalAlltoAll(meter, self.nodes) if cfg.alltoall == "hierarchical" else meter
            if cfg.dispatch == "ragged":
                with meter.phase("count_exchange"):
                    recv_counts = net.exchange_counts(counts)  # [P, m]
                back = ragged_exchange(x, order, counts, recv_counts, k, local_experts, self.group, meter.phase, net.a2a)
            else:
                S = r["capacity"] if r["capacity"] is not None else N  # dropless padded: room for all N
                back = padded_exchange(x, order, counts, S, k, local_experts, self.group, meter.phase, net.a2a)
            # put each returned row back at its (token, choice)
            out = x.new_zeros(N * k, x.shape[1]).index_copy(0, order, back)  # [N*k, d]
        if cfg.alltoall != "node_dedup":  # one row came back per kept (token, choice)
            y = routing.combine_weighted(r["gates"], r["used"], out.view(N, k, -1))  # [N, d]
        if self.shared is not None:
            with timer("shared"):
                y = y + self.shared(x)  # [N, d] every token, on its own rank
        self.aux_loss, self.z_loss = r["aux_loss"], r["z_loss"]
        sync()  # the combine's last kernels belong to this step's time
        times["total"] = time.perf_counter() - t0
        trace = RankTrace(
            rank=self.rank, world_size=self.P, num_experts=E, k=cfg.k, d_model=cfg.d_model,
            capacity=r["capacity"], dispatch=cfg.dispatch,
            chosen=r["chosen"].cpu().numpy(), used=r["used"].cpu().numpy(),
            slot=r["slot"].cpu().numpy(), gates=r["gates"].detach().cpu().numpy(),
            buffer_slots=S, elem_bytes=x.element_size(), times=times,
            aux_loss=float(r["aux_loss"].detach()), z_loss=float(r["z_loss"].detach()),
            router=cfg.router, num_shared=cfg.num_shared, granularity=cfg.granularity,
            net=dict(meter.summary(), nodes=self.nodes, inter_node=cfg.inter_node),
        )
        return y, trace


def _timer(device):
    """A per-phase stopwatch; on a GPU it synchronises so a phase owns its kernels' time."""
    times = {}
    sync = synchronizer(device)

    @contextmanager
    def timer(name):
        sync()
        t = time.perf_counter()
        yield
        sync()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t

    return times, timer

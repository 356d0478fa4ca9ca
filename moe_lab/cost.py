"""A back-of-the-envelope cost model for expert parallelism at scale.

Per GPU and per MoE layer, with P GPUs (one EP group), G GPUs per node, N tokens per GPU, k
experts per token, d_model d, expert hidden size h, b bytes per element, balanced routing:
  dispatch payload        N · k · d · b bytes (combine sends the same back)
  leaves the GPU          (P - 1) / P of it,  crosses nodes  (P - G) / P of it (when P > G)
  AlltoAll time          ≈ max(intra bytes / intra_bw, inter bytes / inter_bw) + messages · latency
                           messages = P - 1 when a GPU sends its per-peer messages one after the
                           other (`Hardware.serial_messages`, an upper bound), 1 when all are in flight
  expert compute         N · k · 2 · (M · d · h) FLOPs / achieved FLOP/s   (M weight matrices)
  expert memory          (E / P) · M · d · h · b_param per layer  (vs E · M · d · h · b_param with DP only)
M = 2 for the course's ReLU FFN (w_in, w_out); M = 3 for a SwiGLU expert (gate, up, down) as in
Mixtral (arXiv 2401.04088) and DeepSeek-V3 (arXiv 2412.19437).
Numbers are parameters, not measurements: set them for your machine.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    gpus_per_node: int = 8
    intra_bw: float = 450e9  # bytes/s per GPU inside a node (NVLink-class, one direction)
    inter_bw: float = 50e9  # bytes/s per GPU between nodes (400 Gb/s-class NIC per GPU)
    latency: float = 5e-6  # seconds per message
    serial_messages: bool = True  # the P-1 per-peer messages pay their latency one after the other
    flops: float = 400e12  # achieved dense bf16 FLOP/s per GPU on the expert matmuls (not the peak)

    def __post_init__(self):
        for name in ("intra_bw", "inter_bw", "flops"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Hardware.{name}={getattr(self, name)!r}: must be > 0")
        if self.gpus_per_node < 1 or self.latency < 0:
            raise ValueError(f"need gpus_per_node >= 1 and latency >= 0, got {self.gpus_per_node}, {self.latency}")


def alltoall_bytes(tokens_per_gpu: int, d_model: int, k: int, P: int, gpus_per_node: int = 8,
                   bytes_per_elem: int = 2) -> dict:
    """Bytes one GPU sends in one dispatch AlltoAll (balanced routing): total, off-GPU, off-node."""
    if P < 1 or tokens_per_gpu < 0:
        raise ValueError(f"need P >= 1 and tokens_per_gpu >= 0, got P={P}, tokens_per_gpu={tokens_per_gpu}")
    total = tokens_per_gpu * k * d_model * bytes_per_elem
    inter = total * max(P - gpus_per_node, 0) / P
    return dict(total=total, remote=total * (P - 1) / P, intra=total * (min(P, gpus_per_node) - 1) / P, inter=inter)


def alltoall_time_parts(tokens_per_gpu, d_model, k, P, hw: Hardware = Hardware(), bytes_per_elem: int = 2) -> dict:
    """Seconds for one dispatch (or combine) AlltoAll on one GPU, split into its two terms."""
    b = alltoall_bytes(tokens_per_gpu, d_model, k, P, hw.gpus_per_node, bytes_per_elem)
    messages = (P - 1) if hw.serial_messages else min(P - 1, 1)
    return dict(bandwidth=max(b["intra"] / hw.intra_bw, b["inter"] / hw.inter_bw), latency=messages * hw.latency)


def inter_node_time(tokens_per_gpu, d_model, k, P, gpus_per_node, bandwidth, latency, hierarchical=False,
                    bytes_per_elem: int = 2) -> float:
    """Seconds one GPU's NIC spends on one AlltoAll's inter-node messages, sent one after another.

    messages · latency + inter-node bytes / bandwidth, balanced routing. Flat: one message to each
    of the P − G GPUs on other nodes; hierarchical: one per other node (P / G − 1), the same bytes.
    """
    b = alltoall_bytes(tokens_per_gpu, d_model, k, P, gpus_per_node, bytes_per_elem)["inter"]
    messages = (P // gpus_per_node - 1) if hierarchical else max(P - gpus_per_node, 0)
    return messages * latency + b / bandwidth


def alltoall_time(tokens_per_gpu, d_model, k, P, hw: Hardware = Hardware(), bytes_per_elem: int = 2) -> float:
    """Seconds for one dispatch (or combine) AlltoAll on one GPU: bandwidth term + latency term."""
    return sum(alltoall_time_parts(tokens_per_gpu, d_model, k, P, hw, bytes_per_elem).values())


def expert_compute_time(tokens_per_gpu: int, d_model: int, d_hidden: int, k: int, hw: Hardware = Hardware(),
                        matrices: int = 2) -> float:
    """Seconds one GPU spends in its experts per layer (forward), balanced routing: it receives
    N·k rows in all, and each row costs 2 FLOPs per expert weight (M·d·h of them)."""
    return tokens_per_gpu * k * 2 * matrices * d_model * d_hidden / hw.flops


def expert_memory(num_experts: int, d_model: int, d_hidden: int, P: int, bytes_per_param: int = 2,
                  matrices: int = 2) -> float:
    """Bytes of expert weights (one layer) one GPU holds when E experts are spread over P GPUs."""
    if num_experts % P:
        raise ValueError(f"num_experts={num_experts} cannot be split evenly over P={P}")
    return num_experts // P * matrices * d_model * d_hidden * bytes_per_param


def scaling_table(Ps, tokens_per_gpu=4096, d_model=4096, d_hidden=14336, k=2, experts_per_gpu=1,
                  hw: Hardware = Hardware(), bytes_per_elem: int = 2, matrices: int = 2) -> list[dict]:
    """One row per EP size P (experts = experts_per_gpu · P): bytes, AlltoAll time (and its
    bandwidth / latency terms), expert compute time, expert memory per GPU per layer, and the
    memory DP alone would need (every GPU holds every expert)."""
    rows = []
    for P in Ps:
        E = experts_per_gpu * P
        b = alltoall_bytes(tokens_per_gpu, d_model, k, P, hw.gpus_per_node, bytes_per_elem)
        parts = alltoall_time_parts(tokens_per_gpu, d_model, k, P, hw, bytes_per_elem)
        rows.append(dict(P=P, experts=E, **{f"bytes_{n}": v for n, v in b.items()},
                         alltoall_s=sum(parts.values()), alltoall_bw_s=parts["bandwidth"],
                         alltoall_latency_s=parts["latency"],
                         expert_s=expert_compute_time(tokens_per_gpu, d_model, d_hidden, k, hw, matrices),
                         expert_mem_ep=expert_memory(E, d_model, d_hidden, P, bytes_per_elem, matrices),
                         expert_mem_dp=expert_memory(E, d_model, d_hidden, 1, bytes_per_elem, matrices)))
    return rows


def crossover(rows: list[dict]) -> int | None:
    """The smallest P of a scaling table where a layer's two AlltoAlls (dispatch + combine) take
    longer than its expert compute, i.e. where EP stops hiding behind the matmuls; None if never."""
    return next((r["P"] for r in rows if 2 * r["alltoall_s"] > r["expert_s"]), None)


def sparsity(d_model: int, d_hidden: int, num_experts: int, k: int) -> dict:
    """Parameters and FLOPs per token of one dense FFN vs one MoE layer (router included).

    A dense FFN with the same hidden size has 2·d·h parameters and spends 2·(2·d·h) FLOPs per
    token; the MoE layer stores E of them but runs only k: parameters grow with E, compute with k.
    """
    ffn = 2 * d_model * d_hidden
    return dict(E=num_experts, k=k, dense_params=ffn, dense_flops=2 * ffn,
                moe_params=num_experts * ffn + d_model * num_experts,
                moe_flops=k * 2 * ffn + 2 * d_model * num_experts)

"""A back-of-the-envelope cost model for expert parallelism at scale.

Per GPU and per MoE layer, with P GPUs (one EP group), G GPUs per node, N tokens per GPU, k
experts per token, d_model d, b bytes per element, balanced routing:
  dispatch payload        N · k · d · b bytes (combine sends the same back)
  leaves the GPU          (P - 1) / P of it,  crosses nodes  (P - G) / P of it (when P > G)
  AlltoAll time          ≈ max(intra bytes / intra_bw, inter bytes / inter_bw) + (P - 1) · latency
  expert memory          (E / P) · 2 · d · h · b_param  (vs E · 2 · d · h · b_param with DP only)
Numbers are parameters, not measurements: set them for your machine.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    gpus_per_node: int = 8
    intra_bw: float = 450e9  # bytes/s per GPU inside a node (NVLink-class, one direction)
    inter_bw: float = 50e9  # bytes/s per GPU between nodes (400 Gb/s-class NIC per GPU)
    latency: float = 5e-6  # seconds per peer message


def alltoall_bytes(tokens_per_gpu: int, d_model: int, k: int, P: int, gpus_per_node: int = 8,
                   bytes_per_elem: int = 2) -> dict:
    """Bytes one GPU sends in one dispatch AlltoAll (balanced routing): total, off-GPU, off-node."""
    if P < 1 or tokens_per_gpu < 0:
        raise ValueError(f"need P >= 1 and tokens_per_gpu >= 0, got P={P}, tokens_per_gpu={tokens_per_gpu}")
    total = tokens_per_gpu * k * d_model * bytes_per_elem
    inter = total * max(P - gpus_per_node, 0) / P
    return dict(total=total, remote=total * (P - 1) / P, intra=total * (min(P, gpus_per_node) - 1) / P, inter=inter)


def alltoall_time(tokens_per_gpu, d_model, k, P, hw: Hardware = Hardware(), bytes_per_elem: int = 2) -> float:
    """Seconds for one dispatch (or combine) AlltoAll on one GPU."""
    b = alltoall_bytes(tokens_per_gpu, d_model, k, P, hw.gpus_per_node, bytes_per_elem)
    return max(b["intra"] / hw.intra_bw, b["inter"] / hw.inter_bw) + (P - 1) * hw.latency


def expert_memory(num_experts: int, d_model: int, d_hidden: int, P: int, bytes_per_param: int = 2) -> float:
    """Bytes of expert weights one GPU holds when E experts are spread over P GPUs."""
    if num_experts % P:
        raise ValueError(f"num_experts={num_experts} cannot be split evenly over P={P}")
    return num_experts // P * 2 * d_model * d_hidden * bytes_per_param


def scaling_table(Ps, tokens_per_gpu=4096, d_model=4096, d_hidden=14336, k=2, experts_per_gpu=1,
                  hw: Hardware = Hardware(), bytes_per_elem: int = 2) -> list[dict]:
    """One row per EP size P (experts = experts_per_gpu · P): bytes, AlltoAll time, expert memory
    per GPU, and the memory DP alone would need (every GPU holds every expert)."""
    rows = []
    for P in Ps:
        E = experts_per_gpu * P
        b = alltoall_bytes(tokens_per_gpu, d_model, k, P, hw.gpus_per_node, bytes_per_elem)
        rows.append(dict(P=P, experts=E, **{f"bytes_{n}": v for n, v in b.items()},
                         alltoall_s=alltoall_time(tokens_per_gpu, d_model, k, P, hw, bytes_per_elem),
                         expert_mem_ep=expert_memory(E, d_model, d_hidden, P, bytes_per_elem),
                         expert_mem_dp=expert_memory(E, d_model, d_hidden, 1, bytes_per_elem)))
    return rows


def sparsity(d_model: int, d_hidden: int, num_experts: int, k: int) -> dict:
    """Parameters and FLOPs per token of one dense FFN vs one MoE layer (router included).

    A dense FFN with the same hidden size has 2·d·h parameters and spends 2·(2·d·h) FLOPs per
    token; the MoE layer stores E of them but runs only k: parameters grow with E, compute with k.
    """
    ffn = 2 * d_model * d_hidden
    return dict(E=num_experts, k=k, dense_params=ffn, dense_flops=2 * ffn,
                moe_params=num_experts * ffn + d_model * num_experts,
                moe_flops=k * 2 * ffn + 2 * d_model * num_experts)

"""The expert: a two-layer FFN E_i(x) = relu(x @ w_in[i]) @ w_out[i].

Also its tensor-parallel form (column-parallel w_in, row-parallel w_out), where each TP rank
holds a slice of the hidden dimension and one all-reduce sums the partial outputs.
"""
from __future__ import annotations

import torch


def expert_ffn(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """x [T, d], w_in [d, h], w_out [h, d] -> [T, d]."""
    return torch.relu(x @ w_in) @ w_out


def tp_shard(w_in: torch.Tensor, w_out: torch.Tensor, tp_rank: int, tp_size: int):
    """This TP rank's slices: w_in columns [d, h/T] and w_out rows [h/T, d].

    relu is elementwise, so relu(x @ w_in[:, cols]) @ w_out[cols, :] summed over the T slices
    equals the whole expert: one all-reduce per expert call, no communication in between.
    """
    h = w_in.shape[-1]
    if h % tp_size:
        raise ValueError(f"d_hidden={h} cannot be split over tp_size={tp_size}; use a multiple of {tp_size}")
    cols = slice(tp_rank * h // tp_size, (tp_rank + 1) * h // tp_size)
    return w_in[..., cols].contiguous(), w_out[..., cols, :].contiguous()


def tp_expert_ffn(x: torch.Tensor, w_in_shard, w_out_shard, tp_group=None) -> torch.Tensor:
    """Tensor-parallel expert: partial output on this TP rank, summed over the TP group."""
    from torch.distributed import _functional_collectives as funcol

    partial = expert_ffn(x, w_in_shard, w_out_shard)  # [T, d], a partial sum
    if tp_group is None:
        return partial
    return funcol.all_reduce(partial, "sum", tp_group)

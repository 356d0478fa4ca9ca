"""The expert: a two-layer FFN E_i(x) = relu(x @ w_in[i]) @ w_out[i].

Also its tensor-parallel form (column-parallel w_in, row-parallel w_out), where each TP rank
holds a slice of the hidden dimension and one all-reduce sums the partial outputs: the f and g
functions of Megatron-LM (Shoeybi et al., arXiv 1909.08053, section 3).
"""
from __future__ import annotations

import torch


_MIN_ROWS = 4  # below this CPU matmul takes a matrix-vector path whose sums round differently


def expert_ffn(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """x [T, d], w_in [d, h], w_out [h, d] -> [T, d].

    A row's output must not depend on how many rows share the call (a chunk of tokens, a whole
    block, the reference's grouping): 1-3 rows are padded to 4 so they take the same kernel.
    """
    T = x.shape[0]
    if 0 < T < _MIN_ROWS:
        x = torch.cat([x, x.new_zeros(_MIN_ROWS - T, x.shape[1])])
        return (torch.relu(x @ w_in) @ w_out)[:T]
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


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: identity forward; backward sums the input gradient over the TP group
    (every TP rank used the same x with a different weight slice)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        from .allreduce import all_reduce
        from .comm import note

        grad = grad.contiguous()
        note("all_reduce (backward)", "tp", grad)
        all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: forward sums the partial outputs over the TP group; backward is identity
    (every TP rank holds the same full output and the same loss)."""

    @staticmethod
    def forward(ctx, partial, group):
        from .allreduce import all_reduce
        from .comm import note

        out = partial.contiguous().clone()
        note("all_reduce", "tp", out)
        all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def tp_expert_ffn(x: torch.Tensor, w_in_shard, w_out_shard, tp_group=None) -> torch.Tensor:
    """Tensor-parallel expert: each TP rank computes relu(x @ w_in[:, cols]) @ w_out[cols, :],
    a partial sum of the output; one all-reduce in the TP group completes it."""
    if tp_group is None:
        return expert_ffn(x, w_in_shard, w_out_shard)
    partial = expert_ffn(_CopyToTP.apply(x, tp_group), w_in_shard, w_out_shard)  # [T, d] partial sum
    return _ReduceFromTP.apply(partial, tp_group)

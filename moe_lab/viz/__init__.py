"""Figures: each a pure function of recorded data (a StepTrace, a history, a table) -> plotly Figure.

Nothing here starts a process or touches torch. One module per figure family:

    step      one step: AlltoAll buffers, [P, P] traffic, per-GPU load, dropped tokens, stragglers
    priority  which assignments a full buffer drops (position vs score priority)
    path      the chapter's Question: one token's trip to its experts' GPUs and back
    training  load balance over training steps; the balancing lab's figures
    cost      sparsity and scaling tables from moe_lab.cost
    timeline  the network chapter: a per-rank timeline of a step, bytes and messages per link type
    style     the shared colours and labels
    variants  chapter 6: the routing variants side by side (load, experts per token)
"""
from .cost import scaling_figure, sparsity_figure
from .path import describe_token_path, token_path
from .priority import dropped_assignments, dropped_gate_share
from .step import (alltoall_buffers, dispatch_bytes, dropped_tokens, expert_time_vs_rows, per_gpu_load, stragglers,
                   traffic_matrix)
from .timeline import link_traffic, timeline
from .style import DROPPED_COLOR, KEPT_COLOR, PADDING_COLOR, PHASE_COLORS, expert_colors, gpu_label
from .training import (HISTORY_FIELDS, alpha_tradeoff, compare_runs, expert_drops, gpu_load, lab_curves,
                       record_from_trace, training_curves)
from .variants import experts_per_token, variant_load

__all__ = ["alltoall_buffers", "traffic_matrix", "per_gpu_load", "dropped_tokens", "stragglers", "expert_time_vs_rows", "token_path",
           "dropped_assignments", "dropped_gate_share", "dispatch_bytes",
           "describe_token_path", "training_curves", "compare_runs", "record_from_trace", "HISTORY_FIELDS",
           "gpu_load", "lab_curves", "expert_drops", "alpha_tradeoff",
           "sparsity_figure", "scaling_figure", "DROPPED_COLOR", "KEPT_COLOR", "PADDING_COLOR", "PHASE_COLORS",
           "expert_colors", "gpu_label", "variant_load", "experts_per_token", "timeline", "link_traffic"]

"""The course's colours and labels, in one place: every figure family imports them from here."""
from __future__ import annotations

from plotly.colors import qualitative

PADDING_COLOR = "#c9c9c9"  # wasted rows of a padded buffer
DROPPED_COLOR = "#d62728"
KEPT_COLOR = "#1f77b4"
PHASE_COLORS = dict(router="#9467bd", count_exchange="#bcbd22", dispatch="#ff7f0e", experts="#2ca02c",
                    combine="#17becf", other="#c9c9c9")
HOVER_CELL_LIMIT = 12_000  # per-cell hover text above this costs more to redraw than it helps


def gpu_label(r: int) -> str:
    return f"GPU {r}"


def expert_colors(num_experts: int) -> list[str]:
    """One colour per expert E_i, the same in every figure of the course."""
    palette = qualitative.Plotly if num_experts <= 10 else qualitative.Alphabet
    return [palette[i % len(palette)] for i in range(num_experts)]

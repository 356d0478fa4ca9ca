"""moe_lab: expert parallelism for Mixture-of-Experts, run for real on multiple processes.

    from moe_lab import MoEConfig, MoELayer, Cluster, routing, reference

Importing it also starts, in the background, the forkserver that every Cluster's ranks are
forked from (moe_lab/prewarm.py), so that the first Cluster of a notebook is ready in well under
a second; set MOE_LAB_PREWARM=0 to turn that off.
"""
from . import prewarm as _prewarm

_prewarm.start_in_background()  # first: the forkserver imports torch while we do

from . import reference, routing  # noqa: E402
from .config import MoEConfig  # noqa: E402
from .trace import RankTrace, StepTrace

__all__ = ["MoEConfig", "MoELayer", "Cluster", "StepTrace", "RankTrace", "routing", "reference"]
__version__ = "0.1.0"


def __getattr__(name):
    # MoELayer and Cluster pull in torch.distributed and multiprocessing: load them on first use.
    if name == "MoELayer":
        from .layer import MoELayer

        return MoELayer
    if name == "Cluster":
        from .cluster import Cluster

        return Cluster
    raise AttributeError(f"module 'moe_lab' has no attribute {name!r}")

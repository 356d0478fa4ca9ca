"""moe_lab: expert parallelism for Mixture-of-Experts, run for real on multiple processes.

    from moe_lab import MoEConfig, MoELayer, Cluster, routing, reference
"""
from . import reference, routing
from .config import MoEConfig
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

"""Dashboards: controls → a real computation on the ranks → `viz` figures, redrawn in place.

    Playground       one real step per control change: buffers, traffic, per-GPU load, drops
    TokenTracer      one token's trip to its experts' GPUs and back
    TrainingMonitor  a training run's load balance, live
    BalancingLab     move α (or k, capacity, the method): the router trains on the ranks, load redrawn live
    Predict          commit to a number, then see the real one
    RouterLab        chapter 6: router, shared experts and granularity on one real step
"""
from .common import copy_figure, default_config
from .lab import BalancingLab
from .monitor import TrainingMonitor
from .playground import Playground
from .predict import Predict
from .tracer import TokenTracer
from .variants import RouterLab

__all__ = ["Playground", "TokenTracer", "TrainingMonitor", "BalancingLab", "Predict", "RouterLab", "copy_figure",
           "default_config"]

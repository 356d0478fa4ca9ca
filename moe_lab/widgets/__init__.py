"""Dashboards: controls → a real computation on the ranks → `viz` figures, redrawn in place.

    Playground       one real step per control change: buffers, traffic, per-GPU load, drops
    TokenTracer      one token's trip to its experts' GPUs and back
    TrainingMonitor  a training run's load balance, live
    Predict          commit to a number, then see the real one
"""
from .common import copy_figure, default_config
from .monitor import TrainingMonitor
from .playground import Playground
from .predict import Predict
from .tracer import TokenTracer

__all__ = ["Playground", "TokenTracer", "TrainingMonitor", "Predict", "copy_figure", "default_config"]

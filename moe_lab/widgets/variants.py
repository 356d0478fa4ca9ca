"""RouterLab: chapter 6's controls (router, shared experts, granularity) → one real step → figures.

The same plumbing as the Playground (controls → `MoEConfig` → `cluster.step` → `viz` →
`copy_figure`), for the routing variants: pick token or expert choice, add shared experts, cut the
experts into m pieces, skew the tokens, and see the per-GPU load, the routed experts each token got,
and the drops, tokens with no expert and bytes of exactly that step.
"""
from __future__ import annotations

import html
import threading
import time

import ipywidgets as w
import plotly.graph_objects as go

from .. import viz
from ..config import ROUTERS, MoEConfig
from ..variants import summarize
from ..viz.variants import experts_per_token, variant_load
from .common import WIDE, Dashboard, copy_figure, default_config

GRANULARITIES = (1, 2, 4, 8)


class RouterLab(Dashboard):
    """cluster: a `Cluster` (or anything with `.step(cfg, tokens_per_rank=, skew=)` and `.world_size`);
    cfg: the base layer (granularity 1). The constructor runs the first step, so the default state is
    drawn before anyone touches a control; a headless cell can set `.controls[name].value`."""

    def __init__(self, cluster, cfg: MoEConfig | None = None, tokens_per_rank: int = 256, skew: float = 0.0):
        self.cluster, self.world_size = cluster, int(cluster.world_size)
        self.base = cfg or default_config(self.world_size)
        if self.base.granularity != 1:
            raise ValueError("RouterLab needs a base config with granularity 1: it cuts the experts itself")
        self.base.check_world(self.world_size)
        self.tokens_per_rank = int(tokens_per_rank)
        self.trace, self.latency_s, self.error, self.steps_run = None, None, None, 0
        self._lock = threading.Lock()
        options = [m for m in GRANULARITIES if self.base.d_hidden % m == 0]
        self.controls = dict(
            router=w.Dropdown(options=ROUTERS, value=self.base.router, description="router", **WIDE),
            num_shared=w.IntSlider(value=self.base.num_shared, min=0, max=3, description="shared experts S",
                                   continuous_update=False, **WIDE),
            granularity=w.Dropdown(options=options, value=1, description="granularity m", **WIDE),
            skew=w.FloatSlider(value=skew, min=0.0, max=1.0, step=0.05, description="skew (all want E0)",
                               continuous_update=False, **WIDE),
            capacity_factor=w.FloatSlider(value=self.base.capacity_factor or 1.25, min=0.25, max=4.0, step=0.05,
                                          description="capacity factor", continuous_update=False, **WIDE),
        )
        self.status = w.HTML()
        self.refresh()
        self.figures = {"load": go.FigureWidget(viz.per_gpu_load(self.trace)),
                        "experts": go.FigureWidget(experts_per_token({self._label(): self.trace}))}
        c = self.controls
        self.widget = w.VBox([
            w.HBox([w.VBox([c["router"], c["num_shared"], c["granularity"]]), w.VBox([c["skew"], c["capacity_factor"]])]),
            self.status, w.HBox([self.figures["load"], self.figures["experts"]])])
        for control in c.values():
            control.observe(self._on_change, names="value")

    def settings(self) -> MoEConfig:
        """The config the controls describe now."""
        c = self.controls
        cfg = self.base.replace(router=c["router"].value, num_shared=int(c["num_shared"].value),
                                capacity_factor=float(c["capacity_factor"].value), policy="drop")
        return cfg.fine_grained(int(c["granularity"].value))

    def _label(self) -> str:
        cfg = self.settings()
        return f"{cfg.router}, S={cfg.num_shared}, m={cfg.granularity}"

    def refresh(self):
        """One step with the current settings; redraw the figures and the summary line."""
        cfg, skew = self.settings(), float(self.controls["skew"].value)
        t0 = time.perf_counter()
        trace = self.cluster.step(cfg, tokens_per_rank=self.tokens_per_rank, skew=skew)
        self.latency_s = time.perf_counter() - t0
        self.trace, self.error = trace, None
        self.steps_run += 1
        if hasattr(self, "figures"):
            copy_figure(self.figures["load"], viz.per_gpu_load(trace))
            copy_figure(self.figures["experts"], experts_per_token({self._label(): trace}))
        s = summarize(trace)
        self.status.value = (
            f"<b>step {1e3 * self.latency_s:.0f} ms</b> · E = {cfg.num_experts}, k = {cfg.k}, h = {cfg.d_hidden}, "
            f"S = {cfg.num_shared} · dropped <b>{s['dropped']}</b> · tokens with no routed expert "
            f"<b>{s['no_expert']}</b> · max/mean load <b>{s['max_over_mean']:.2f}</b> · "
            f"bytes {s['bytes'] / 2**10:.0f} KiB")
        return trace

    def _on_change(self, change) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a step is running; the next change after it runs the latest settings
        try:
            self.refresh()
        except Exception as e:  # noqa: BLE001 - show it next to the controls, keep the last figures
            self.error = e
            self.status.value = f"<span style='color:#d62728'><b>step failed:</b> {html.escape(str(e))}</span>"
        finally:
            self._lock.release()

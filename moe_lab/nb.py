"""Notebook set-up shared by every chapter: seeded RNGs and plotly output that stays small.

Figures are stored as plotly JSON (rendered by JupyterLab's plotly extension) instead of HTML
with the whole plotly.js bundle inside, so committed notebooks stay small.
"""
from __future__ import annotations

import random


def setup(seed: int = 0) -> None:
    import numpy as np
    import plotly.io as pio
    import torch

    pio.renderers.default = "plotly_mimetype"
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    np.set_printoptions(precision=4, suppress=True)

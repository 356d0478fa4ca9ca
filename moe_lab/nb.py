"""Notebook set-up shared by every chapter, and static copies of its figures for kernel-less viewers.

Figures are stored as plotly JSON (rendered live by JupyterLab's plotly extension) instead of HTML
with the whole plotly.js bundle inside, so committed notebooks stay small. GitHub and nbviewer do
not draw plotly JSON, so `python -m moe_lab.nb --static chapters/*.ipynb` adds a small PNG beside
every plotly output (the same output, a second mime type): JupyterLab still prefers the live
figure, static viewers show the picture. nbval never compares image/png, so checked cells stay
stable. Rendering uses kaleido (a test dependency) with a local Chromium, offline; Pillow, when
installed, cuts each picture to a 64-colour palette (plots have few colours: about 4x smaller).
"""
from __future__ import annotations

import argparse
import base64
import os
import pathlib
import random
import sys

PLOTLY_MIME = "application/vnd.plotly.v1+json"
PNG_MIME = "image/png"
CHROMIUM = "/usr/bin/chromium"


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


def plotly_outputs(nb: dict) -> list[dict]:
    """The output dicts of a notebook (as JSON) that hold a plotly figure."""
    return [out for cell in nb.get("cells", []) if cell.get("cell_type") == "code"
            for out in cell.get("outputs", []) if PLOTLY_MIME in out.get("data", {})]


def render_png(figures: list[dict], width: int = 760, scale: float = 1.0) -> list[bytes]:
    """PNG bytes of plotly figure dicts, in one headless browser session (kaleido + Chromium).

    The height is each figure's own layout height (450 px when it has none); the width is fixed so
    every picture fits a notebook column.
    """
    try:
        import kaleido
    except ImportError as e:
        raise RuntimeError("static figures need kaleido: pip install kaleido") from e
    if "BROWSER_PATH" not in os.environ and pathlib.Path(CHROMIUM).exists():
        os.environ["BROWSER_PATH"] = CHROMIUM  # Debian's Chromium; kaleido would try to download one
    kaleido.start_sync_server(silence_warnings=True)
    try:
        return [kaleido.calc_fig_sync({"data": f.get("data", []), "layout": f.get("layout", {})},
                                      opts=dict(format="png", width=width, scale=scale,
                                                height=f.get("layout", {}).get("height") or 450))
                for f in figures]
    finally:
        kaleido.stop_sync_server(silence_warnings=True)


def shrink_png(png: bytes, colours: int = 64) -> bytes:
    """The same picture with a small palette (needs Pillow; returned unchanged without it)."""
    try:
        from PIL import Image
    except ImportError:
        return png
    import io

    img = Image.open(io.BytesIO(png)).convert("RGB")
    small = img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, "PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def add_static_images(*paths, width: int = 760, scale: float = 1.0) -> dict:
    """Give every plotly output of the notebooks at `paths` a PNG twin; rewrite them in place.

    One browser session renders all of them. Idempotent: an existing PNG is replaced by a fresh
    rendering. Returns {path: number of figures}.
    """
    import nbformat

    books = {pathlib.Path(p): nbformat.read(p, as_version=4) for p in paths}
    outs = {p: plotly_outputs(nb) for p, nb in books.items()}
    every = [o for p in books for o in outs[p]]
    for out, png in zip(every, render_png([o["data"][PLOTLY_MIME] for o in every], width, scale) if every else []):
        out["data"][PNG_MIME] = base64.b64encode(shrink_png(png)).decode("ascii")
        out.setdefault("metadata", {}).setdefault(PNG_MIME, {}).update(width=width)
    for p, nb in books.items():
        nbformat.write(nb, p)
    return {p: len(o) for p, o in outs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.nb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--static", action="store_true", required=True,
                        help="add a PNG beside every plotly figure of the notebooks (in place)")
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    parser.add_argument("--width", type=int, default=760, help="picture width in px (default 760)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks if not p.is_file() or p.suffix != ".ipynb"]
    if missing:
        parser.error(f"not a notebook file: {', '.join(missing)}")
    for p, n in add_static_images(*args.notebooks, width=args.width).items():
        print(f"{p}: {n} figure(s) with a static image, {p.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

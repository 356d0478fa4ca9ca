"""The benchmark suite: run the sections, check every contender, write JSON + a figure, print a table.

    python -m moe_lab bench [--quick] [--out DIR] [--world-size W] [--sections a,b]
    python benchmarks/run.py ...            (the same, from a checkout)

Sections (in this order): startup, interactivity, lab, floor, ragged_vs_padded, peer, titan, transport, variants,
course.
All sections that need ranks share one persistent Cluster of `world_size` ranks. Writes
`bench[-quick][-wW].json` (every raw sample, machine facts, checks, targets) and a plotly
summary `bench[...].html` (plus `.png` when kaleido is importable) into the output folder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .common import check, load_average, machine_info, record

SECTIONS = ("startup", "interactivity", "lab", "floor", "ragged_vs_padded", "peer", "titan", "transport", "variants",
            "network",
            "course")


@dataclass
class BenchContext:
    """What a section needs: settings, the shared ranks, repetition counts and a progress bar."""

    quick: bool
    world_size: int
    cluster_timeout: float = 600.0
    _cluster: object = field(default=None, repr=False)

    @property
    def cluster(self):
        if self._cluster is None:
            from moe_lab.cluster import Cluster

            self._cluster = Cluster(self.world_size, timeout=self.cluster_timeout)
        return self._cluster

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def reps(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def sizes(self, full_sizes) -> list:
        """All sizes in full mode; only the smallest in quick mode."""
        return [min(full_sizes)] if self.quick else list(full_sizes)

    def progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, disable=None, dynamic_ncols=True)


def repo_root() -> Path:
    """The checkout that holds moe_lab/ (chapters/ and solutions/ live beside it)."""
    return Path(__file__).resolve().parent.parent


def section_course(bc) -> dict:
    if bc.quick:
        return dict(status="skipped", reason="full mode only (runs every notebook)")
    root = repo_root()
    dirs = [d for d in ("chapters", "solutions") if (root / d).is_dir()]
    if not dirs:
        return dict(status="skipped", reason="no chapters/ or solutions/ folder in this checkout")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", *(d + "/" for d in dirs)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - t0
    tail = [line for line in out.stdout.strip().splitlines() if line.strip()][-1:] or [""]
    rec = record("pytest --nbval-lax " + " ".join(d + "/" for d in dirs), [elapsed], dict(folders=dirs),
                 returncode=out.returncode, summary=tail[0],
                 **check({"notebook_failures": 0.0 if out.returncode == 0 else 1.0}, tol=0.0))
    return dict(status="ok", records=[rec], ratios=[], notes=["one run: the wall time of the whole notebook suite"])


def _sections():
    from .fairscale_peer import section_peer
    from .lab import section_lab
    from .network import section_network
    from .sections import section_floor, section_interactivity, section_ragged_vs_padded
    from .startup import section_startup
    from .titan_peer import section_titan
    from .transport import section_transport
    from .variants import section_variants

    return dict(startup=section_startup, interactivity=section_interactivity, lab=section_lab,
                floor=section_floor,
                ragged_vs_padded=section_ragged_vs_padded, peer=section_peer, titan=section_titan,
                transport=section_transport, variants=section_variants, network=section_network,
                course=section_course)


def parse_sections(text: str | None) -> list:
    if not text:
        return list(SECTIONS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]  # always in the suite's order (startup first)


def output_stem(quick: bool, world_size: int) -> str:
    return "bench" + ("-quick" if quick else "") + ("" if world_size == 8 else f"-w{world_size}")


def run_suite(quick: bool = False, out_dir="benchmarks/results", world_size: int = 8, sections=None,
              echo=print) -> dict:
    """Run the chosen sections; write JSON (and the figure) to out_dir; return the result dict."""
    from .report import evaluate_targets, figure, render
    from moe_lab.config import check_world_size

    check_world_size(world_size)
    names = parse_sections(sections) if not isinstance(sections, (list, tuple)) else parse_sections(",".join(sections))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(machine_info(), quick=quick, world_size=world_size, sections=names,
                command="python -m moe_lab bench" + (" --quick" if quick else "") + f" --world-size {world_size}")
    bc = BenchContext(quick=quick, world_size=world_size)
    table = _sections()
    result = dict(meta=meta, sections={}, targets=[])
    t_all = time.perf_counter()
    try:
        for name in names:
            t0 = time.perf_counter()
            load0 = load_average()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                sec = table[name](bc)
            except Exception as e:  # noqa: BLE001 - one failed section must not lose the others
                sec = dict(status="error", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
                bc.close()  # a broken cluster is not reused; the next section starts fresh ranks
            sec.update(wall_s=time.perf_counter() - t0, load_average_before=load0, load_average_after=load_average())
            result["sections"][name] = sec
            print(f"[bench] {name}: {sec['status']} in {sec['wall_s']:.0f} s", file=sys.stderr, flush=True)
    finally:
        if bc._cluster is not None:
            meta["threads_per_rank"] = bc._cluster.threads
        bc.close()
    meta["wall_s"] = time.perf_counter() - t_all
    result["targets"] = evaluate_targets(result["sections"], world_size)
    result["all_matched"] = all(r.get("matched_reference", True) for s in result["sections"].values()
                                for r in s.get("records", []))
    result["errors"] = [n for n, s in result["sections"].items() if s.get("status") == "error"]
    stem = output_stem(quick, world_size)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
    result["paths"] = {"json": str(json_path)}
    try:
        fig = figure(result)
        fig.write_html(out_dir / f"{stem}.html", include_plotlyjs=True)
        result["paths"]["html"] = str(out_dir / f"{stem}.html")
        if _kaleido_ok():
            fig.write_image(out_dir / f"{stem}.png")
            result["paths"]["png"] = str(out_dir / f"{stem}.png")
    except Exception as e:  # noqa: BLE001 - the numbers matter more than the picture
        result["paths"]["figure_error"] = f"{type(e).__name__}: {e}"
    if echo:
        echo(render(result))
        for n in result["errors"]:
            echo(f"\nsection {n} failed:\n{result['sections'][n]['traceback']}")
        echo("\nwrote " + ", ".join(result["paths"].values()))
    return result


def _kaleido_ok() -> bool:
    try:
        import kaleido  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def exit_code(result: dict) -> int:
    """0 when every section ran and every contender matched the reference, else 1."""
    return 0 if result["all_matched"] and not result["errors"] else 1

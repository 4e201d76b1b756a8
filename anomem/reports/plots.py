"""PNG plots of the parameter sweeps (the paper's Fig. 3 memory size, Fig. 4 sampling ratio).

A sweep is a set of methods of one benchmark config sharing a ``sweep`` name,
each with its abscissa ``x`` (e.g. ``{name: mem128, sweep: memory_size, x: 128,
overrides: {mem_sizes: [128, 64]}}``).  One PNG per sweep plots the mean AUROC
over the classes every point finished, one line per gamma.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from anomem.serialization import atomic_write_bytes


def sweep_points(grid: dict[str, Any], rows: list[dict[str, Any]]
                 ) -> dict[str, dict[float, list[tuple[float, float, int]]]]:
    """sweep -> gamma -> sorted (x, mean AUROC %, number of classes) over common classes."""
    by_method: dict[str, dict[tuple[float, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_method[r["method"]][(float(r["gamma"]), int(r["normal_class"]))].append(100 * r["auroc"])
    sweeps: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in grid["methods"]:
        if "sweep" in m:
            sweeps[m["sweep"]].append(m)
    out: dict[str, dict[float, list[tuple[float, float, int]]]] = {}
    for name, methods in sweeps.items():
        out[name] = {}
        for g in (float(v) for v in grid["gammas"]):
            common = set.intersection(*[{c for (gg, c) in by_method[m["name"]] if gg == g}
                                        for m in methods])
            if common:
                out[name][g] = sorted((float(m["x"]), float(np.mean(
                    [np.mean(by_method[m["name"]][(g, c)]) for c in common])), len(common))
                    for m in methods)
    return out


def sweep_plots(grid: dict[str, Any], rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``<benchmark>_<sweep>.png`` for every sweep with finished points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, by_gamma in sweep_points(grid, rows).items():
        if not by_gamma:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
        for g, pts in by_gamma.items():
            xs, ys, ns = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", label=f"γ={g:g} ({min(ns)} classes)")
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylabel("mean AUROC (%)")
        ax.set_title(f"{grid['name']}: {name.replace('_', ' ')} sweep")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        paths.append(atomic_write_bytes(Path(out_dir) / f"{grid['name']}_{name}.png", buf.getvalue()))
    return paths

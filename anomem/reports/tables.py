"""Markdown tables of a benchmark's results, laid out like the paper's Tables 1-4.

Each table puts the measured AUROC (%) of a method next to the paper's number
for the same method, dataset and gamma, and states which cells are
missing: a mean is only taken over the normal classes for which every method
of the table finished, and the count of classes is printed with it.

Methods are matched to the paper by their ``paper`` key in the benchmark
config (``anomem``, ``deepsad``, ``kmeans``, ``single_scale``,
``multi_scale``); datasets by their label (``cifar10*``, ``cifar100*``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from anomem.errors import InvalidInputError
from anomem.protocols.relative import compare
from anomem.protocols.results import read_results
from anomem.protocols.runner import cells_of
from anomem.serialization import atomic_write_text

#: One-vs-all AUROC (%) of the paper, by dataset, method and gamma (Table 1-2).
PAPER_ONE_VS_ALL: dict[str, dict[str, dict[float, float]]] = {
    "cifar10": {"anomem": {0.0: 91.5, 0.01: 92.5, 0.05: 97.1, 0.1: 97.6},
                "deepsad": {0.0: 60.9, 0.01: 72.6, 0.05: 77.9, 0.1: 79.8}},
    "cifar100": {"anomem": {0.0: 86.1, 0.01: 90.9, 0.05: 92.3, 0.1: 94.7}},
    "cub200": {"anomem": {0.0: 81.4, 0.01: 84.1, 0.05: 85.3, 0.1: 86.0}},
}
#: Table 4, CIFAR-10 one-class AUROC (%) of the prototype / scale ablation.
PAPER_ABLATION = {"kmeans": 88.1, "single_scale": 90.5, "multi_scale": 91.5}
#: OoD AUROC (%) with CIFAR-10 in-distribution (Table 3).
PAPER_OOD = {"svhn": 99.2, "lsun": 97.5, "cifar100": 89.2}


def paper_dataset(label: str) -> str | None:
    """The paper's dataset a result label refers to, if any."""
    low = label.lower()
    for key in ("cifar100", "cifar10", "cub200"):
        if low.startswith(key):
            return key
    return None


def _fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def per_class(rows: list[dict[str, Any]]) -> dict[tuple[str, str, float, int], dict[int, float]]:
    """AUROC (%) per (method, dataset, gamma, class), keyed by draw: processes that share a
    results file (``--shard``, ``--reverse``) append a class's draws in any order."""
    out: dict[tuple[str, str, float, int], dict[int, float]] = defaultdict(dict)
    for r in rows:
        out[(r["method"], r["dataset"], float(r["gamma"]), int(r["normal_class"]))][
            int(r.get("draw", 0))] = 100 * float(r["auroc"])
    return out


def draw_mean(by_draw: dict[int, float]) -> float:
    """Mean AUROC over the draws of one cell of :func:`per_class`."""
    return float(np.mean(list(by_draw.values())))


def complete_classes(table: dict[tuple[str, str, float, int], dict[int, float]], methods: list[str],
                     dataset: str, gamma: float, classes: list[int]) -> list[int]:
    """Classes for which every method of ``methods`` has a result at ``gamma``."""
    return [c for c in classes if all((m, dataset, gamma, c) in table for m in methods)]


def one_vs_all_table(grid: dict[str, Any], rows: list[dict[str, Any]], dataset: str,
                     classes: list[int], names: tuple[str, ...]) -> str:
    """Table 1/2 layout: methods x gamma, mean AUROC over the classes finished by every
    method that runs at that gamma (a method's own ``gammas`` may leave some out: n/a)."""
    table = per_class(rows)
    methods = [m["name"] for m in grid["methods"]]
    gammas = [float(g) for g in grid["gammas"]]
    pd = paper_dataset(dataset)
    head = "| method | " + " | ".join(f"γ={g:g} | paper" for g in gammas) + " |"
    lines = [f"### One-vs-all AUROC (%), {dataset}: mean over classes (± std over draws)", "",
             head, "|---|" + "---:|---:|" * len(gammas)]
    runs_at = {g: [m["name"] for m in grid["methods"]
                   if g in [float(x) for x in m.get("gammas", gammas)]] for g in gammas}
    for m in grid["methods"]:
        cells = []
        for g in gammas:
            if m["name"] not in runs_at[g]:         # the method's own gammas leave this one out
                cells += ["n/a", _fmt(None)]
                continue
            done = complete_classes(table, runs_at[g], dataset, g, classes)
            vals = [table[(m["name"], dataset, g, c)] for c in done]
            if len(done):
                draws = sorted(set.intersection(*(set(v) for v in vals)))  # every class has them
                per_draw = np.array([[v[d] for v in vals] for d in draws]).mean(axis=1)
                std = f" ± {per_draw.std():.1f}" if len(draws) > 1 else ""
                cells.append(f"{per_draw.mean():.1f}{std} ({len(done)}/{len(classes)} cl.)")
            else:
                cells.append("— (0 cl.)")
            paper = PAPER_ONE_VS_ALL.get(pd or "", {}).get(m.get("paper", ""), {}).get(g)
            cells.append(_fmt(paper))
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    lines += ["", "#### Per class (AUROC %, mean over draws; — = not run yet)", "",
              "| class | " + " | ".join(f"{m} γ={g:g}" for g in gammas for m in methods) + " |",
              "|---|" + "---:|" * (len(gammas) * len(methods))]
    for c in classes:
        vals = [_fmt(draw_mean(table[(m, dataset, g, c)]) if (m, dataset, g, c) in table
                     else None) for g in gammas for m in methods]
        lines.append(f"| {c} {names[c]} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def ablation_table(grid: dict[str, Any], rows: list[dict[str, Any]], dataset: str,
                   classes: list[int]) -> str:
    """Table 4 layout: the methods carrying an ablation ``paper`` key, one-class AUROC."""
    ab = [m for m in grid["methods"] if m.get("paper") in PAPER_ABLATION
          or m.get("paper") == "anomem"]
    if len(ab) < 2 or 0.0 not in [float(g) for g in grid["gammas"]]:
        return ""
    table = per_class(rows)
    done = complete_classes(table, [m["name"] for m in ab], dataset, 0.0, classes)
    lines = [f"### Ablation (Table 4), {dataset}, one-class AUROC (%) over {len(done)}/"
             f"{len(classes)} classes", "", "| variant | measured | paper |", "|---|---:|---:|"]
    for m in ab:
        key = "multi_scale" if m["paper"] == "anomem" else m["paper"]
        v = np.mean([draw_mean(table[(m["name"], dataset, 0.0, c)]) for c in done]) if done else None
        lines.append(f"| {m['name']} ({key}) | {_fmt(v)} | {_fmt(PAPER_ABLATION[key])} |")
    return "\n".join(lines) + "\n"


def versus_table(grid: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """AnoMem (the ``paper: anomem`` method) against every other method, on shared cells:
    AUROC difference and relative error change ((1-a2)-(1-a1))/(1-a1), negative = better."""
    ours = next((m["name"] for m in grid["methods"] if m.get("paper") == "anomem"), None)
    if ours is None:
        return ""
    lines = [f"### {ours} against each method (cells both finished)", "",
             "| dataset | γ | method | classes | method AUROC | " + ours + " AUROC | Δ | "
             "relative error change |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for m in (m["name"] for m in grid["methods"] if m["name"] != ours):
        try:
            rel = compare(rows, m, ours)
        except InvalidInputError:
            continue
        for (ds, g), r in sorted(rel.items()):
            pairs = _paired(rows, m, ours, ds, g)
            a1, a2 = (100 * float(np.mean([p[i] for p in pairs])) for i in (0, 1))
            lines.append(f"| {ds} | {g:g} | {m} | {len(pairs)} | {a1:.1f} | {a2:.1f} | "
                         f"{a2 - a1:+.1f} | {100 * r:+.0f}% |")
    return "\n".join(lines) + "\n"


def _paired(rows: list[dict[str, Any]], a: str, b: str, ds: str, g: float
            ) -> list[tuple[float, float]]:
    def by(m: str) -> dict[tuple[int, int], float]:
        return {(int(r["normal_class"]), int(r.get("draw", 0))): float(r["auroc"]) for r in rows
                if r["method"] == m and r["dataset"] == ds and float(r["gamma"]) == g}
    x, y = by(a), by(b)
    return [(x[k], y[k]) for k in sorted(set(x) & set(y))]


def coverage(grid: dict[str, Any], rows: list[dict[str, Any]],
             datasets: dict[str, tuple[str, ...]]) -> str:
    """Which cells of the grid are finished and which are missing."""
    done = {r["cell"] for r in rows}
    fake = {k: _Named(v) for k, v in datasets.items()}
    cells = cells_of(grid, fake)  # type: ignore[arg-type]
    missing = [c.key for c in cells if c.key not in done]
    wall = sum(float(r.get("wall_s", 0)) for r in rows)
    text = [f"### Coverage: {len(cells) - len(missing)}/{len(cells)} cells finished "
            f"({wall / 3600:.2f} h of cell wall time)", ""]
    if missing:
        text.append("Missing cells (method|dataset|class|γ|draw): " + ", ".join(missing))
    return "\n".join(text) + "\n"


#: The keys of a results row the tables and plots read (every row the grid runner writes has them).
ROW_KEYS = frozenset({"cell", "method", "dataset", "gamma", "normal_class", "auroc", "classes"})


class _Named:
    """Stand-in split that only carries class names (enough for :func:`cells_of`)."""

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes


def render(grid: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The whole Markdown report of a benchmark."""
    names = {r["dataset"]: tuple(r["classes"]) for r in rows}
    parts = [f"# Benchmark `{grid['name']}`\n",
             "AUROC in %, anomalies as positives. Paper numbers: the paper's Tables 1-4 "
             "(DeepSAD row as reported in the paper).\n"]
    for ds, n in names.items():
        classes = list(range(len(n))) if grid["classes"] == "all" else list(grid["classes"])
        parts += [one_vs_all_table(grid, rows, ds, classes, n),
                  ablation_table(grid, rows, ds, classes) or None]
    parts += [versus_table(grid, rows) or None, coverage(grid, rows, names)]
    return "\n".join(p for p in parts if p is not None)


def write_reports(grid: dict[str, Any], results: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``<name>_tables.md`` (and sweep plots, if any) next to the results."""
    from anomem.reports.plots import sweep_plots

    rows = [r for r in read_results(results) if ROW_KEYS <= r.keys()]   # rows of a one-vs-all grid
    out = Path(out_dir)
    paths = [atomic_write_text(out / f"{grid['name']}_tables.md", render(grid, rows))]
    return paths + sweep_plots(grid, rows, out)

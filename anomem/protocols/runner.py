"""Resumable grid runner: method x dataset x normal class x gamma x draw (one-vs-all).

A benchmark config (YAML) names the datasets, classes, gammas, draws and
methods.  Every finished cell is stored at once as one JSON row of the results
file (JSON Lines, rewritten atomically under a lock, so several shards may
share it); a rerun skips the cells already there, so an interrupted sweep
resumes where it stopped.  Each row holds the cell, the method's full
configuration, the seed, the AUROC, wall time and peak memory.

Config keys (see ``benchmarks/configs/``)::

    name: cpu                      # label stored in every row
    preset: cpu                    # AnoMem preset every method starts from
    overrides: {stage1_epochs: 2}  # applied to every method
    datasets: [cifar10_jpeg]       # or {name: cifar10, path: ...}, cifar100, digits, folders;
                                   # size: and classes: on any (anomem.protocols.datasets)
    classes: all                   # or a list of class indices
    gammas: [0.0, 0.05]
    draws: 1                       # draw d uses seed + d (anomaly draw and training)
    seed: 0
    train_per_class: null          # optional seeded subsample of each training class
    test_per_class: null           # optional seeded subsample of each test class
    methods:                       # run in this order inside each (class, gamma, draw)
      - {name: anomem}
      - {name: knn, kind: knn, encoder: anomem}   # reuses the fitted AnoMem of the cell
      - {name: kmeans, kind: anomem, overrides: {use_memory: false, prototypes: kmeans}}
      - {name: deepsad, kind: deepsad}
      - {name: supervised, kind: supervised, gammas: [0.05]}  # only where it is defined
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from anomem.baselines.deepsad import DeepSAD
from anomem.baselines.knn import KNNDetector
from anomem.baselines.pixel_knn import PixelKNN
from anomem.baselines.supervised import SupervisedClassifier
from anomem.config import get_config, load_yaml, to_dict
from anomem.data.dataset import LabelledSplit
from anomem.detector import AnoMem
from anomem.errors import ConfigError
from anomem.protocols.datasets import check_dataset_specs, is_int, load_all
from anomem.protocols.datasets import load_dataset as load_dataset  # re-exported: scripts import it here
from anomem.protocols.datasets import subsample as subsample
from anomem.protocols.one_vs_all import OneVsAllTask, fit_estimator, run_one_vs_all
from anomem.protocols.results import append_result, read_results

KINDS: dict[str, Callable[..., Any]] = {
    "anomem": AnoMem, "deepsad": DeepSAD, "knn": KNNDetector, "supervised": SupervisedClassifier,
    # the training-free reference: it takes no AnoMem configuration
    "pixel_knn": lambda _cfg, **kw: PixelKNN(**kw)}
#: Method keys read by the runner and the reports, not passed to the estimator.
NON_ESTIMATOR_KEYS = {"name", "kind", "overrides", "encoder", "paper", "sweep", "x", "gammas"}
GRID_KEYS = {"name", "preset", "overrides", "datasets", "classes", "gammas", "draws", "seed",
             "train_per_class", "test_per_class", "methods", "results"}


@dataclass(frozen=True)
class Cell:
    """One grid point; ``key`` identifies it in the results file."""

    method: str
    dataset: str
    normal_class: int
    gamma: float
    draw: int

    @property
    def key(self) -> str:
        return f"{self.method}|{self.dataset}|{self.normal_class}|{self.gamma:g}|{self.draw}"


# ---------------------------------------------------------------- the grid
def load_grid(path_or_dict: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A validated benchmark config with defaults filled in."""
    g = dict(path_or_dict) if isinstance(path_or_dict, dict) else load_yaml(path_or_dict)
    not_names = [k for k in g if not isinstance(k, str)]
    if not_names:
        raise ConfigError(f"benchmark keys must be names, got {not_names[0]!r}")
    unknown = sorted(set(g) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"unknown benchmark key(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(sorted(GRID_KEYS))}")
    g.setdefault("name", "benchmark")
    g.setdefault("preset", "cpu")
    g.setdefault("overrides", {})
    g.setdefault("datasets", ["cifar10_jpeg"])
    g.setdefault("classes", "all")
    g.setdefault("gammas", [0.0])
    g.setdefault("draws", 1)
    g.setdefault("seed", 0)
    g.setdefault("methods", [{"name": "anomem"}])
    _check_grid_types(g)
    before: list[str] = []
    for m in g["methods"]:
        kind = m.get("kind", m.get("name"))
        if kind not in KINDS:
            raise ConfigError(f"method {m.get('name')!r}: unknown kind {kind!r}; use one of "
                              f"{', '.join(KINDS)}")
        if m.get("encoder") is not None and m["encoder"] not in before:
            raise ConfigError(f"method {m['name']!r}: encoder {m['encoder']!r} must name a method "
                              f"listed before it (methods run in the listed order); list "
                              f"{m['encoder']!r} first")
        before.append(m["name"])
    return g


def _is_number_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                       and np.isfinite(x) for x in v)


def _check_grid_types(g: dict[str, Any]) -> None:
    """The type of every grid key, so that a wrong one is a ConfigError naming it."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"benchmark key {key!r} must be {what}, got {g[key]!r}")

    name = g["name"]
    need(isinstance(name, str) and name not in ("", ".", "..") and not set(name) & set("/\\\0"),
         "name", "a file name (no path separators)")
    need(isinstance(g["preset"], str), "preset", "a preset name or YAML path")
    need(isinstance(g["overrides"], dict) and all(isinstance(k, str) for k in g["overrides"]),
         "overrides", "a mapping of config keys to values")
    need(isinstance(g["datasets"], list) and len(g["datasets"]) > 0
         and all(isinstance(d, (str, dict)) for d in g["datasets"]),
         "datasets", "a non-empty list of dataset names or {name: ..., path: ...} mappings")
    check_dataset_specs(g["datasets"])
    need(g["classes"] == "all" or (isinstance(g["classes"], list) and all(map(is_int, g["classes"]))),
         "classes", "'all' or a list of class indices")
    need(_is_number_list(g["gammas"]) and len(g["gammas"]) > 0, "gammas", "a non-empty list of numbers")
    need(is_int(g["draws"]) and g["draws"] >= 1, "draws", "a positive integer")
    need(is_int(g["seed"]), "seed", "an integer")
    for key in ("train_per_class", "test_per_class"):
        need(g.get(key) is None or (is_int(g[key]) and g[key] >= 1), key, "null or a positive integer")
    need(isinstance(g.get("results", ""), str), "results", "a file path")
    need(isinstance(g["methods"], list) and len(g["methods"]) > 0
         and all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in g["methods"]),
         "methods", "a non-empty list of mappings with a 'name'")
    for m in g["methods"]:
        if not isinstance(m.get("overrides", {}), dict) or not _is_number_list(m.get("gammas", [])):
            raise ConfigError(f"method {m['name']!r}: 'overrides' must be a mapping and 'gammas' a "
                              f"list of numbers")


def method_config(grid: dict[str, Any], method: dict[str, Any], seed: int) -> Any:
    """The AnoMem config of one method: preset, grid overrides, method overrides, seed."""
    return get_config(grid["preset"], {**grid["overrides"], **method.get("overrides", {}),
                                       "seed": seed})


def cells_of(grid: dict[str, Any], datasets: dict[str, LabelledSplit]) -> list[Cell]:
    """Every cell, ordered dataset, class, draw, gamma, method (a class finishes whole)."""
    out = []
    for label, split in datasets.items():
        classes = range(len(split.classes)) if grid["classes"] == "all" else grid["classes"]
        for c in classes:
            for d in range(int(grid["draws"])):
                for gamma in grid["gammas"]:
                    out += [Cell(m["name"], label, int(c), float(gamma), d) for m in grid["methods"]
                            if float(gamma) in [float(v) for v in m.get("gammas", [gamma])]]
    return out


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process in MB (and of CUDA since the last reset)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss / (1024 * 1024 if sys.platform == "darwin" else 1024)}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def method_fit_score(method: dict[str, Any], cfg: Any, fitted: dict[str, Any] | None = None
                     ) -> tuple[Callable[[OneVsAllTask, int], np.ndarray], str | None]:
    """The ``fit_score(task, seed)`` of one method and the name of the encoder it reuses.

    It builds the method's estimator (its keys other than :data:`NON_ESTIMATOR_KEYS`
    as arguments), fits it on the task's training images and scores its test
    images.  With ``fitted`` (the detectors already fitted for the same data),
    ``encoder: <method>`` takes that method's detector when it is there (else
    the estimator trains its own encoder, and the name returned is None), and
    the fitted detector is stored under this method's name.
    """
    kind = method.get("kind", method["name"])
    extra = {k: v for k, v in method.items() if k not in NON_ESTIMATOR_KEYS}
    encoder = (fitted or {}).get(method.get("encoder", ""))
    if encoder is not None:
        extra["encoder"] = encoder

    def fit_score(task: OneVsAllTask, _seed: int) -> np.ndarray:
        det = fit_estimator(KINDS[kind](cfg, **extra), task.x_train, task.labels_train)
        if fitted is not None:
            fitted[method["name"]] = det
        return det.decision_function(task.x_test)

    return fit_score, (method.get("encoder") if encoder is not None else None)


def row_tail(method: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """What every row ends with: the method's options, its config, threads and finish time."""
    return {"method_options": {k: v for k, v in method.items() if k not in ("name", "kind")},
            "config": to_dict(cfg), "torch_threads": torch.get_num_threads(),
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def run_cell(grid: dict[str, Any], cell: Cell, split: LabelledSplit,
             fitted: dict[str, Any]) -> dict[str, Any]:
    """Fit and score one cell; ``fitted`` holds the detectors already fitted for this
    (dataset, class, gamma, draw), so ``encoder: <method>`` can reuse one."""
    method = next(m for m in grid["methods"] if m["name"] == cell.method)
    seed = int(grid["seed"]) + cell.draw
    cfg = method_config(grid, method, seed)
    fit_score, reused = method_fit_score(method, cfg, fitted)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = run_one_vs_all(split, cell.normal_class, cell.gamma, seed, fit_score)
    return {"cell": cell.key, "benchmark": grid["name"], "method": cell.method,
            "kind": method.get("kind", method["name"]), "dataset": cell.dataset,
            "classes": list(split.classes), "draw": cell.draw, **res,
            "wall_s": round(time.perf_counter() - t0, 2), **peak_memory_mb(),
            "encoder_reused": reused, **row_tail(method, cfg)}


def run_grid(grid: dict[str, Any] | str | Path, results: str | Path, shard: tuple[int, int] = (0, 1),
             progress: bool = True, max_cells: int | None = None,
             datasets: dict[str, LabelledSplit] | None = None, reverse: bool = False
             ) -> list[dict[str, Any]]:
    """Run every cell of ``grid`` missing from ``results``; returns the rows it added.

    ``shard=(i, n)`` runs only the cells whose group index is i modulo n (a group
    is one dataset, class, draw and gamma, so reuse inside a group is kept);
    ``max_cells`` stops after that many new cells (for tests and time boxes);
    ``reverse`` walks the groups from the last one, so a second process can
    work on the same shard from the other end (a cell finished by another
    process meanwhile is skipped).
    """
    g = load_grid(grid)
    datasets = datasets if datasets is not None else load_all(g)
    groups: dict[tuple[str, int, float, int], list[Cell]] = {}
    for c in cells_of(g, datasets):
        groups.setdefault((c.dataset, c.normal_class, c.gamma, c.draw), []).append(c)
    ordered = [grp for i, grp in enumerate(groups.values()) if i % shard[1] == shard[0]]
    mine = [c for grp in (reversed(ordered) if reverse else ordered) for c in grp]
    done = {r.get("cell") for r in read_results(results)}
    todo = [c for c in mine if c.key not in done]
    added: list[dict[str, Any]] = []
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"{g['name']} cells",
               unit="cell", disable=not progress, dynamic_ncols=True)
    fitted: dict[str, Any] = {}
    group = None
    for cell in todo:
        if max_cells is not None and len(added) >= max_cells:
            break
        if cell.key in {r.get("cell") for r in read_results(results)}:
            bar.update(1)  # finished meanwhile by another process walking the grid
            continue
        if (cell.dataset, cell.normal_class, cell.gamma, cell.draw) != group:
            group, fitted = (cell.dataset, cell.normal_class, cell.gamma, cell.draw), {}
        bar.set_postfix_str(cell.key)
        row = run_cell(g, cell, datasets[cell.dataset], fitted)
        append_result(results, row)
        added.append(row)
        bar.update(1)
        bar.write(f"{cell.key}: AUROC {100 * row['auroc']:.1f} ({row['wall_s']:.0f} s)")
    bar.close()
    return added


def run_protocol(grid: dict[str, Any] | str | Path, protocol: str, results: str | Path,
                 datasets: dict[str, LabelledSplit] | None = None) -> list[dict[str, Any]]:
    """The ``ood``, ``cross_type`` and ``linear_eval`` protocols over a grid
    (:func:`anomem.protocols.grid_protocols.run_protocol`)."""
    from anomem.protocols.grid_protocols import run_protocol as run
    return run(grid, protocol, results, datasets)

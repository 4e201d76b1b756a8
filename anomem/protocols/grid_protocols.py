"""The other protocols over a benchmark grid: out-of-distribution, cross-type, linear evaluation.

They read the same grid as the one-vs-all runner (:mod:`anomem.protocols.runner`)
and store rows the same way: each finished row at once in the results file
(JSON Lines), a cell already there skipped, so an interrupted run resumes.
``anomem benchmark <grid> --protocol ood`` runs them from the command line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anomem.data.dataset import LabelledSplit
from anomem.detector import AnoMem
from anomem.errors import ConfigError
from anomem.protocols.datasets import load_all
from anomem.protocols.one_vs_all import fit_estimator
from anomem.protocols.results import append_result, read_results
from anomem.protocols.runner import load_grid, method_config, method_fit_score, peak_memory_mb, row_tail

PROTOCOLS = ("ood", "cross_type", "linear_eval")


@dataclass
class _ProtocolRows:
    """Stores each finished row of a protocol at once; a cell already in ``results`` is skipped."""

    grid: dict[str, Any]
    protocol: str
    results: str | Path
    added: list[dict[str, Any]]

    def store(self, key: str, m: dict[str, Any], seed: int, dataset: str,
              work: Callable[..., dict[str, Any]], *args: Any, **fields: Any) -> None:
        """Run ``work(*args)`` unless ``key`` is finished; the row adds ``fields``."""
        if key in {r.get("cell") for r in read_results(self.results)}:
            return
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = work(*args)
        row = {"cell": key, "benchmark": self.grid["name"], "protocol": self.protocol,
               "method": m["name"], "kind": m.get("kind", m["name"]), "dataset": dataset, **res,
               **fields, "wall_s": round(time.perf_counter() - t0, 2), **peak_memory_mb(),
               **row_tail(m, method_config(self.grid, m, seed))}
        append_result(self.results, row)
        self.added.append(row)


def run_protocol(grid: dict[str, Any] | str | Path, protocol: str, results: str | Path,
                 datasets: dict[str, LabelledSplit] | None = None) -> list[dict[str, Any]]:
    """The other protocols over the grid's methods, datasets, classes, gammas and draws.

    ``ood`` (Table 3): the first dataset is in-distribution, every other one
    out-of-distribution; see :func:`_ood_rows`.  ``cross_type``: every normal
    class with every other class held out as the unseen anomaly type;
    ``linear_eval``: AnoMem-kind methods, one-class on every training image,
    then the linear probe over all classes.  Rows go to ``results`` as they
    finish and finished cells are skipped, as for one-vs-all.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; use {', '.join(PROTOCOLS)}")
    g = load_grid(grid)
    if protocol == "ood" and len(datasets if datasets is not None else g["datasets"]) < 2:
        raise ConfigError("protocol 'ood' needs two or more datasets: the first is in-distribution, "
                          "each other one out-of-distribution (e.g. datasets: [cifar10_jpeg, "
                          "{name: digits, size: 32}])")
    data = datasets if datasets is not None else load_all(g)
    rows = _ProtocolRows(g, protocol, results, [])
    if protocol == "ood":
        _ood_rows(g, data, rows)
        return rows.added
    for m in g["methods"]:
        for d in range(int(g["draws"])):
            seed = int(g["seed"]) + d
            cfg = method_config(g, m, seed)
            for ds, split in data.items():
                if protocol == "cross_type":
                    _cross_type_rows(g, m, d, cfg, ds, split, rows)
                elif m.get("kind", m["name"]) == "anomem":
                    rows.store(f"linear_eval|{m['name']}|{ds}|{d}", m, seed, ds, _linear_probe, cfg,
                               split)
    return rows.added


def _cross_type_rows(g: dict[str, Any], m: dict[str, Any], d: int, cfg: Any, ds: str,
                     split: LabelledSplit, rows: _ProtocolRows) -> None:
    """The ``cross_type`` rows of one method, draw and dataset: each normal class of the grid
    with each other class held out of training as the unseen anomaly type, at each gamma."""
    from anomem.protocols.cross_type import run_cross_type

    seed = int(g["seed"]) + d
    fit_score, _ = method_fit_score(m, cfg)
    classes = range(len(split.classes)) if g["classes"] == "all" else g["classes"]
    for c in classes:
        for t in (t for t in range(len(split.classes)) if t != c):
            for gm in g["gammas"]:
                rows.store(f"cross_type|{m['name']}|{ds}|{c}|{t}|{float(gm):g}|{d}", m, seed, ds,
                           lambda *a: run_cross_type(*a)[0], split, int(c), float(gm), seed,
                           fit_score, [t])


def _ood_rows(g: dict[str, Any], data: dict[str, LabelledSplit], rows: _ProtocolRows) -> None:
    """The ``ood`` rows: for each draw and each out-of-distribution dataset, every method in
    the listed order is trained on the whole first dataset's training split (all normal) and
    scores its test images (label 0) with the other dataset's test images (label 1).

    ``encoder: <method>`` reuses the detector that method fitted for the same draw and
    pair (the rows say ``encoder_reused``); rows are keyed ``ood|method|in|out|draw``.
    """
    from anomem.protocols.ood import run_ood

    inside, *outside = list(data)
    for d in range(int(g["draws"])):
        seed = int(g["seed"]) + d
        for out in outside:
            fitted: dict[str, Any] = {}
            for m in g["methods"]:
                fit_score, reused = method_fit_score(m, method_config(g, m, seed), fitted)
                rows.store(f"ood|{m['name']}|{inside}|{out}|{d}", m, seed, inside, run_ood,
                           data[inside], data[out].x_test, out, seed, fit_score, draw=d,
                           encoder_reused=reused)


def _linear_probe(cfg: Any, split: LabelledSplit) -> dict[str, Any]:
    """Linear evaluation of a one-class AnoMem encoder fitted on every training image."""
    from anomem.protocols.linear_eval import linear_eval
    return linear_eval(fit_estimator(AnoMem(cfg), split.x_train), split)

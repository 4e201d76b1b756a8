"""CIFAR-10 one-vs-all, gamma = 0, `cpu` preset: AnoMem vs the k-means prototype ablation.

One cell per invocation (a fresh process, so the peak resident memory is the
cell's own), appended to a JSONL results file; an existing cell is skipped.

    python benchmarks/core/cifar10_one_class.py --cls 0 --variant anomem
    python benchmarks/core/cifar10_one_class.py --cls 0 --variant kmeans
    python benchmarks/core/cifar10_one_class.py --table   # Markdown table of the results

Variants: ``anomem`` is the `cpu` preset (memory at stages 3 and 4);
``kmeans`` is the paper's Table 4 baseline on the same budget: no memory in
stage 1 (plain multi-scale contrastive learning), only the last scale, and the
nearest of N_mem k-means centroids of training features as the prototype.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from anomem import AnoMem, __version__
from anomem.config import parse_override
from anomem.data.cifar import read_cifar10_jpeg_tar
from anomem.data.locate import CIFAR10_JPEG, data_file
from anomem.protocols.one_vs_all import auroc, make_one_vs_all
from anomem.serialization import atomic_write_text

HERE = Path(__file__).parent
RESULTS = HERE / "cifar10_one_class.jsonl"
VARIANTS = {"anomem": {},
            "kmeans": {"use_memory": False, "prototypes": "kmeans", "memory_stages": [4],
                       "mem_sizes": [32], "ratios": [1.0]}}


def run_cell(cls: int, variant: str, seed: int, overrides: dict) -> dict:
    split = read_cifar10_jpeg_tar(data_file(CIFAR10_JPEG))
    task = make_one_vs_all(split, cls, 0.0, seed)
    t0 = time.perf_counter()
    det = AnoMem("cpu", seed=seed, **VARIANTS[variant], **overrides).fit(task.x_train,
                                                                       validation_fraction=0.0)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = det.decision_function(task.x_test)
    score_s = time.perf_counter() - t1
    return {"cls": cls, "class_name": split.classes[cls], "variant": variant, "seed": seed,
            "auroc": auroc(task.labels_test, scores), "fit_s": round(fit_s, 1),
            "score_s": round(score_s, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "config": {**VARIANTS[variant], **overrides}, "preset": "cpu",
            "torch_threads": torch.get_num_threads(), "anomem": __version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU only"}


def table(rows: list[dict]) -> str:
    lines = ["| class | AnoMem AUROC | k-means AUROC | AnoMem fit (s) | k-means fit (s) | "
             "AnoMem peak RSS (MB) | k-means peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    by = {(r["cls"], r["variant"]): r for r in rows}
    for c in sorted({r["cls"] for r in rows}):
        a, k = by.get((c, "anomem"), {}), by.get((c, "kmeans"), {})
        def f(r, key, fmt):
            return fmt.format(r[key]) if key in r else "—"
        lines.append(f"| {c} | {f(a, 'auroc', '{:.3f}')} | {f(k, 'auroc', '{:.3f}')} | "
                     f"{f(a, 'fit_s', '{:.0f}')} | {f(k, 'fit_s', '{:.0f}')} | "
                     f"{f(a, 'peak_rss_mb', '{:.0f}')} | {f(k, 'peak_rss_mb', '{:.0f}')} |")
    for v in ("anomem", "kmeans"):
        vals = [r["auroc"] for r in rows if r["variant"] == v]
        if vals:
            lines.append(f"\nmean AUROC {v}: {np.mean(vals):.3f} over {len(vals)} classes")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cls", type=int)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="anomem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--table", action="store_true")
    a = p.parse_args()
    rows = [json.loads(x) for x in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    if not a.table:
        overrides = dict(parse_override(o) for o in a.overrides)
        if any(r["cls"] == a.cls and r["variant"] == a.variant and r["seed"] == a.seed for r in rows):
            print("cell already done")
        else:
            rows.append(run_cell(a.cls, a.variant, a.seed, overrides))
            atomic_write_text(RESULTS, "".join(json.dumps(r) + "\n" for r in rows))
            print(json.dumps(rows[-1]))
    atomic_write_text(HERE / "cifar10_one_class.md", table(rows))


if __name__ == "__main__":
    main()

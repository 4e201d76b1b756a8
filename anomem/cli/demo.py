"""``anomem demo``: one-vs-all on scikit-learn's digits, one-class and semi-supervised.

The embedded default needs no download: every digit class is in turn the
normal class, at gamma = 0 (one-class) and gamma = 0.05 (semi-supervised); the
per-class test AUROC and the mean are printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomem.config import parse_override
from anomem.data.digits import load_digits_split
from anomem.detector import AnoMem
from anomem.protocols.one_vs_all import OneVsAllTask, run_one_vs_all


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="one-vs-all AUROC on the embedded digits dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.05],
                   help="labelled-anomaly ratios to run (default: 0 0.05)")
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)),
                   help="normal classes to run (default: all ten digits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw and of training")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the 'digits' preset, e.g. --set stage1_epochs=10")


def run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.overrides)
    split = load_digits_split(seed=args.seed)

    def fit_score(task: OneVsAllTask, seed: int) -> np.ndarray:
        det = AnoMem("digits", seed=seed, **overrides).fit(task.x_train, task.labels_train)
        return det.decision_function(task.x_test)

    t0 = time.perf_counter()
    table: dict[float, list[float]] = {}
    print(f"anomem demo: digits one-vs-all, {len(split.x_train)} train / {len(split.x_test)} test "
          f"images, torch threads={torch.get_num_threads()}")
    print("class " + "".join(f"  gamma={g:<5}" for g in args.gammas))
    for c in args.classes:
        row = []
        for g in args.gammas:
            res = run_one_vs_all(split, c, g, args.seed, fit_score)
            table.setdefault(g, []).append(res["auroc"])
            row.append(res["auroc"])
        print(f"{split.classes[c]:>5} " + "".join(f"  {100 * a:10.1f}" for a in row), flush=True)
    print(" mean " + "".join(f"  {100 * np.mean(table[g]):10.1f}" for g in args.gammas))
    print(f"AUROC in %; wall time {time.perf_counter() - t0:.0f} s")
    return 0

"""Which standardiser an ensemble's members need: their scores on training normals, held-out
normals, or every image of the fit.

For one small set, class and seed, fits :class:`anomem.ensemble.AnoMemEnsemble` (current
defaults, five members) and prints one JSON row: each member's test AUROC and the mean and
std of its scores on the training normals (``train``), the held-out normals (``held``) and
every image of the fit (``all``), then the ensemble's test AUROC with each standardiser and
with none (raw scores averaged).  A member that fits its training normals closely gets a
small ``train`` std, hence a large weight under that standardiser.

    python -m experiments.small_sets.standardisers --set-name cifar200 --class 3 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomem.ensemble import AnoMemEnsemble
from experiments.small_sets.spread import SET_NAMES, fit_split, small_task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set-name", choices=SET_NAMES, required=True)
    p.add_argument("--class", dest="c", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--members", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t = small_task(args.set_name, args.c)
    ens = AnoMemEnsemble(members=args.members, seed=args.seed).fit(t.x_train, progress=False)
    train, held = fit_split(len(t.x_train), args.seed)
    parts = {"train": t.x_train[train.numpy()], "held": t.x_train[held.numpy()], "all": t.x_train}
    test = [m.decision_function(t.x_test) for m in ens.members_]
    stats = {k: [(float(s.mean()), float(s.std())) for s in (m.decision_function(x) for m in ens.members_)]
             for k, x in parts.items()}
    row = {"set": args.set_name, "c": args.c, "seed": args.seed,
           "members": [round(100 * roc_auc_score(t.labels_test, s), 2) for s in test], "stats": stats}
    for k, st in stats.items():
        z = np.mean([(s - mu) / sd for s, (mu, sd) in zip(test, st, strict=True)], axis=0)
        row[f"ens_{k}"] = round(100 * roc_auc_score(t.labels_test, z), 2)
    row["ens_raw"] = round(100 * roc_auc_score(t.labels_test, np.mean(test, axis=0)), 2)
    row["ens_package"] = round(100 * roc_auc_score(t.labels_test, ens.decision_function(t.x_test)), 2)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

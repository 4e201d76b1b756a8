"""Seed spread of one-class AUROC on small training sets: the same images, refitted with seeds.

A user who refits on the same images should get the same detector.  Each
set below is fixed (the seed moves only the fit: initialisation, augmentation,
hold-out draw, consolidation), fitted as a user would (``AnoMem()``, preset
``auto``, ``validation_fraction`` 0.2 unless ``--set`` says otherwise), and
scored on a fixed test set, beside a 1-NN on the fit's encoder and on pixels:

* ``digits28``: scikit-learn's digits resized to 28 x 28 (split of seed 0), the
  first 120 training images of the class; test: the whole test split;
* ``cifar200``: CIFAR-10 (``ANOMEM_DATA``), the first 200 training images of
  the class; test: the first 200 test images of every class;
* ``mtd100``: Magnetic Tile Defects at 128 px, 100 defect-free training tiles
  (split of seed 0); test: that split's test tiles (class is ignored);
* ``mtd``: the same with every defect-free training tile of the split (not a small
  set: the reference for ``mtd100``).

    python -m experiments.small_sets.spread --set-name cifar200 --classes 0 3 --seeds 0 1 2 3 4
    python -m experiments.small_sets.spread --set-name cifar200 --fit validation_fraction=0 ...
    python -m experiments.small_sets.spread --set-name cifar200 --members 5 --name members5

``--members K``: the row's detector is :class:`anomem.ensemble.AnoMemEnsemble` with K
members (one hold-out draw, K fits on the same training images, or with ``--subsample
F`` each on its own draw of that share of them); the 1-NN column reads the first member's
encoder; ``each``: every member's own AUROC; ``--dump DIR``: the members' standardised test
scores, one ``.npz`` per class and seed.  ``frr``: the share of the test normals above the
detector's threshold (its target is 0.05).  (The rows ``ens3_f1``, ``ens5`` and ``ens5sh``
came from this script's own averaging of separate fits, at commit ff5bce2.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomem import AnoMem
from anomem.baselines.knn import KNNDetector
from anomem.baselines.pixel_knn import PixelKNN
from anomem.config import parse_override
from anomem.ensemble import AnoMemEnsemble
from anomem.fit_setup import fit_split as split_for_fit
from anomem.presets import auto_preset, input_side

#: the sets :func:`small_task` knows
SET_NAMES = ("digits28", "cifar200", "mtd100", "mtd")
#: the share of normals :meth:`anomem.AnoMem.fit` holds out by default
HOLDOUT = 0.2


def fit_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How a default fit of ``seed`` splits ``n`` normal images: a bool mask of those it trains
    on, and the indices of those it holds out, in the order it draws them."""
    return split_for_fit(torch.ones(n), HOLDOUT, seed)


def small_task(name: str, c: int) -> Any:
    """The fixed training images of class ``c`` and the fixed test set of one small set."""
    if name == "digits28":
        from anomem.cli.demo import resized
        from anomem.data.digits import load_digits_split
        s = load_digits_split(seed=0)
        x = resized(s.x_train[s.y_train == c][:120], 28)
        return SimpleNamespace(x_train=x, x_test=resized(s.x_test, 28),
                               labels_test=(s.y_test != c).astype(int))
    if name == "cifar200":
        from anomem.protocols.runner import load_dataset
        _, s = load_dataset("cifar10_jpeg")
        test = np.concatenate([np.flatnonzero(s.y_test == k)[:200] for k in range(10)])
        return SimpleNamespace(x_train=s.x_train[s.y_train == c][:200], x_test=s.x_test[test],
                               labels_test=(s.y_test[test] != c).astype(int))
    from anomem.data.mtd import read_mtd, split_mtd
    sp = split_mtd(read_mtd(side=128), seed=0)
    return SimpleNamespace(x_train=sp.train.images[:100 if name == "mtd100" else None], x_test=sp.test.images,
                           labels_test=sp.test.labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set-name", choices=SET_NAMES, required=True)
    p.add_argument("--classes", type=int, nargs="+", default=[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--name", default="default", help="the row's name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--fit", action="append", default=[], metavar="KEY=VALUE",
                   help="AnoMem.fit argument, e.g. validation_fraction=0")
    p.add_argument("--members", type=int, default=0, help="fit an AnoMemEnsemble of K members (see above)")
    p.add_argument("--subsample", type=float, default=1.0,
                   help="with --members: the share of the training normals each member draws")
    p.add_argument("--dump", help="with --members: a folder for each row's members' standardised "
                                  "test scores (an .npz per class and seed)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = dict(parse_override(o) for o in args.set)
    fit_kw = dict(parse_override(o) for o in args.fit)
    for c in args.classes:
        t = small_task(args.set_name, c)
        for seed in args.seeds:
            t0 = time.time()
            if args.members:
                det = AnoMemEnsemble(members=args.members, subsample=args.subsample, seed=seed,
                                     **overrides).fit(t.x_train, progress=False, **fit_kw)
                encoder = det.members_[0]
            else:
                det = encoder = AnoMem(seed=seed, **overrides).fit(t.x_train, progress=False, **fit_kw)
            z = det.member_scores(t.x_test) if args.members else None   # members scored once
            row = {"anomem": det.decision_function(t.x_test) if z is None else z.mean(axis=0)}
            preset = auto_preset(input_side(t.x_train))
            row["knn"] = KNNDetector(preset, k=1, encoder=encoder).fit(t.x_train).decision_function(t.x_test)
            if seed == args.seeds[0]:
                pixel = PixelKNN(size=input_side(t.x_train), k=1).fit(t.x_train)
                row["pixel"] = pixel.decision_function(t.x_test)
            each = {"frr": round(float(np.mean(row["anomem"][t.labels_test == 0] > det.threshold_)), 4)}
            if z is not None:
                each["each"] = [round(100 * roc_auc_score(t.labels_test, v), 2) for v in z]
                if args.dump:
                    np.savez(f"{args.dump}/{args.set_name}_{args.name}_c{c}_s{seed}.npz", z=z,
                             labels=t.labels_test)
            print(json.dumps({"set": args.set_name, "name": args.name, "c": c, "seed": seed,
                              "preset": preset, **{k: round(100 * roc_auc_score(t.labels_test, v), 2)
                                                   for k, v in row.items()},
                              **each, "t": round(time.time() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

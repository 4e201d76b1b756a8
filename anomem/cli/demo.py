"""``anomem demo``: one-vs-all on scikit-learn's digits, one-class and semi-supervised.

The embedded default needs no download: every digit class is in turn the
normal class, at gamma = 0 (one-class) and gamma = 0.05 (semi-supervised).
Beside AnoMem's test AUROC, each row shows two references on the same split:
a nearest neighbour on AnoMem's own encoder (``KNNDetector(k=1)`` on the
one-class model's pooled features) and a nearest neighbour on raw pixels
(``PixelKNN``), so a reader sees where AnoMem stands.  With several
``--seeds``, cells are means over seeds and the last row gives mean ± std
over seeds of the class means.  ``--side N`` first resizes the 8x8 digits to
N x N (bilinear) and fits the preset ``auto`` picks for N-pixel images (``cpu``
for 25-64 px), as a user with digits of that size gets it.  ``--members K``
fits :class:`anomem.ensemble.AnoMemEnsemble` of K networks instead of one
(the encoder column reads its first member); ``--members auto`` (the default)
fits five for a one-class fit on at most 500 training images, else one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomem.baselines.knn import KNNDetector
from anomem.baselines.pixel_knn import PixelKNN
from anomem.config import parse_override
from anomem.data.digits import load_digits_split
from anomem.detector import AnoMem
from anomem.ensemble import make_detector, parse_members
from anomem.errors import ConfigError
from anomem.presets import auto_preset
from anomem.protocols.one_vs_all import auroc, make_one_vs_all
from anomem.serialization import atomic_write_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="one-vs-all AUROC on the embedded digits dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.05],
                   help="labelled-anomaly ratios to run (default: 0 0.05)")
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)),
                   help="normal classes to run (default: all ten digits)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds of the split, the draw and training (default: 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the preset, e.g. --set stage1.epochs=10")
    p.add_argument("--side", type=int, default=8,
                   help="resize the 8x8 digits to this side and fit the preset 'auto' picks for it "
                        "(default 8: the 'digits' preset)")
    p.add_argument("--members", default="auto", metavar="K|auto",
                   help="networks to fit per cell: K, or 'auto' (the default): an ensemble of 5 for "
                        "one-class fits on at most 500 training images, else 1")
    p.add_argument("--out", type=Path, default=None,
                   help="also write every cell (class, seed, column, AUROC) to this JSON file")


def resized(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 (N, h, w) images resized to (N, side, side), bilinear (unchanged at their own side)."""
    if images.shape[1:] == (side, side):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BILINEAR))
                     for im in images])


def run_cell(normal_class: int, seed: int, gammas: list[float], overrides: dict,
             side: int = 8, members: int | str = 1) -> dict[str, float]:
    """Every column of one (class, seed) row: AnoMem per gamma (an ensemble when ``members``
    asks for several networks: :func:`anomem.ensemble.make_detector`), kNN on its encoder (the
    first member's), pixel kNN."""
    split = load_digits_split(seed=seed)
    split.x_train, split.x_test = resized(split.x_train, side), resized(split.x_test, side)
    preset = auto_preset(side)
    row: dict[str, float] = {}
    for g in gammas:
        task = make_one_vs_all(split, normal_class, g, seed)
        det = make_detector(preset, members, len(task.x_train), semi_supervised=g > 0, seed=seed,
                            **overrides)
        det.fit(task.x_train, task.labels_train, validation_fraction=0.0)
        row[f"gamma={g:g}"] = auroc(task.labels_test, det.decision_function(task.x_test))
        if g == 0:
            encoder = det if isinstance(det, AnoMem) else det.members_[0]
            knn = KNNDetector(preset, k=1, encoder=encoder).fit(task.x_train, task.labels_train)
            row["knn_encoder"] = auroc(task.labels_test, knn.decision_function(task.x_test))
    task = make_one_vs_all(split, normal_class, 0.0, seed)
    pix = PixelKNN(size=side, k=1).fit(task.x_train)
    row["knn_pixels"] = auroc(task.labels_test, pix.decision_function(task.x_test))
    return row


def mean_row(per_seed: list[list[float]]) -> str:
    """The last line of the table: each column's mean over seeds of the class means (AUROC in %),
    with its std over seeds when there are several seeds (one seed has no spread to show)."""
    if len(per_seed[0]) > 1:
        return " mean " + "".join(f"{100 * np.mean(v):8.1f} ± {100 * np.std(v):3.1f}" for v in per_seed)
    return " mean " + "".join(f"{100 * np.mean(v):14.1f}" for v in per_seed)


def run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.overrides)
    if "seed" in overrides:
        raise ConfigError("demo: the seed is not a --set key here; use --seeds N [N ...]")
    t0 = time.perf_counter()
    members = parse_members(args.members)
    if not 8 <= args.side <= 512:
        raise ConfigError(f"demo: --side must be between 8 and 512 pixels, got {args.side}")
    split = load_digits_split(seed=args.seeds[0])
    print(f"anomem demo: digits one-vs-all, {len(split.x_train)} train / {len(split.x_test)} test "
          f"images at {args.side}x{args.side} px, preset {auto_preset(args.side)!r}, seeds "
          f"{args.seeds}, torch threads={torch.get_num_threads()}")
    cells: list[dict] = []
    columns: list[str] = []
    for c in args.classes:
        rows = [run_cell(c, s, args.gammas, overrides, args.side, members) for s in args.seeds]
        columns = [f"gamma={g:g}" for g in args.gammas] + ["knn_encoder", "knn_pixels"]
        columns = [k for k in columns if k in rows[0]]
        if c == args.classes[0]:
            print("class " + "".join(f"{k:>14}" for k in columns))
        cells += [{"class": c, "seed": s, **r} for s, r in zip(args.seeds, rows)]
        print(f"{split.classes[c]:>5} " + "".join(
            f"{100 * np.mean([r[k] for r in rows]):14.1f}" for k in columns), flush=True)
    means = {k: [np.mean([x[k] for x in cells if x["seed"] == s]) for s in args.seeds]
             for k in columns}
    print(mean_row(list(means.values())))
    print(f"AUROC in %; kNN columns: 1-nearest neighbour on AnoMem's encoder (gamma 0 model) and "
          f"on {args.side}x{args.side} raw pixels; wall time {time.perf_counter() - t0:.0f} s")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps({"overrides": overrides, "seeds": args.seeds,
                                                "side": args.side, "preset": auto_preset(args.side),
                                                "members": members,
                                                "threads": torch.get_num_threads(),
                                                "cells": cells}, indent=1))
    return 0

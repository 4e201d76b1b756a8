"""One-class AUROC of an AnoMem variant beside kNN on its own encoder, on three image sets.

Each run fits ``AnoMem`` (one-class, no hold-out) with ``--set`` overrides and
prints one JSON line per class: the fused score (Eq. 13), every scale alone,
the image-level scales alone (alpha-fused), and a 1-nearest-neighbour on the
same encoder (``KNNDetector(k=1, encoder=det)``).  The image sets and budgets
(``--dataset``: ``digits``, ``cifar``, ``cifar-full``, ``mtd``) are those of
:mod:`experiments.tasks`.

Unless ``--set score_views=...`` says otherwise, the fit holds every test-time
view (``score_views=flips``: the image, its mirror, upside down, both), whose
memories are consolidated after the image's own in the same random streams, so
``fused`` (the image alone, every other column too) is the ``single``-view
fit's score and ``views2`` / ``views4`` are the ``mirror`` / ``flips`` fits'
(Eq. 13 averaged over the first 2 / 4 views); ``as_fitted`` scores as the fit
does.

``--pixel`` fits nothing: it prints, per class, a 1-nearest-neighbour on raw
pixels at the images' own side (``PixelKNN``) on the same split, the reference
every variant stands beside (rows named ``pixel_knn``).

``--no-restart-empty`` runs consolidation without
:func:`anomem.stages.consolidate.restart_empty` (empty patterns stay where they
are), the behaviour before it existed.

    python -m experiments.variants.variant_probe --name r1 --dataset digits --seed 0
    python -m experiments.variants.variant_probe --name r4 --dataset cifar --seed 0 --classes 0 1 \\
        --set global_mem_factor=4
    python -m experiments.variants.variant_probe --pixel --dataset mtd --seed 0 --classes 0
    python -m experiments.variants.variant_probe --summary experiments/variants/variant_probe.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments.tasks import task_source


def run(args: argparse.Namespace) -> None:
    import torch
    from sklearn.metrics import roc_auc_score

    import anomem.stages.consolidate as consolidate
    from anomem import AnoMem
    from anomem.baselines.knn import KNNDetector
    from anomem.config import parse_override

    torch.set_num_threads(1)
    if args.no_restart_empty:
        consolidate.restart_empty = lambda vecs, patterns: (patterns, (vecs @ patterns.t()).argmax(-1))
    overrides = dict(parse_override(o) for o in args.set)
    task_of, preset, budget = task_source(args.dataset, args.seed)
    for c in args.classes:
        t0 = time.time()
        t = task_of(c)
        det = AnoMem(preset, seed=args.seed, **budget, **{"score_views": "flips", **overrides}).fit(
            t.x_train, t.labels_train, validation_fraction=0.0, progress=False)

        def auroc(v: Any, y: np.ndarray = t.labels_test) -> float:
            return round(100 * roc_auc_score(y, np.asarray(v)), 2)

        views = len(det.network.views)
        per = det.scale_scores(t.x_test)                 # (N, S x views), view after view
        n = per.shape[1] // views
        alphas, n_maps = det.network.alphas.cpu().numpy()[:n] * views, det.network.n_maps
        view_scores = [per[:, v * n:(v + 1) * n] @ alphas for v in range(views)]   # Eq. 13 each
        per = per[:, :n]
        knn = KNNDetector(preset, k=1, encoder=det).fit(t.x_train, t.labels_train)
        print(json.dumps({
            "name": args.name, "ds": args.dataset, "seed": args.seed, "c": c,
            "fused": auroc(view_scores[0]),
            **{f"views{k}": auroc(np.mean(view_scores[:k], axis=0)) for k in (2, 4) if k <= views},
            "as_fitted": auroc(det.decision_function(t.x_test)),
            "scales": [auroc(per[:, i]) for i in range(per.shape[1])],
            "img_alpha": auroc(per[:, n_maps:] @ alphas[n_maps:]),
            "knn": auroc(knn.decision_function(t.x_test)), "t": round(time.time() - t0)}), flush=True)


def pixel_rows(args: argparse.Namespace) -> None:
    """Raw-pixel 1-NN AUROC per class on the split of ``--dataset`` and ``--seed``."""
    from sklearn.metrics import roc_auc_score

    from anomem.baselines.pixel_knn import PixelKNN
    from anomem.presets import input_side

    task_of, _, _ = task_source(args.dataset, args.seed)
    for c in args.classes:
        t = task_of(c)
        pix = PixelKNN(size=input_side(t.x_train), k=1).fit(t.x_train, t.labels_train)
        auroc = roc_auc_score(t.labels_test, pix.decision_function(t.x_test))
        print(json.dumps({"name": "pixel_knn", "ds": args.dataset, "seed": args.seed, "c": c,
                          "pixel": round(100 * auroc, 2)}), flush=True)


def summary(path: Path) -> None:
    """Mean over seeds of the per-seed class means, ± their std, per (image set, variant, score)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for ds in dict.fromkeys(r["ds"] for r in rows):
        for name in dict.fromkeys(r["name"] for r in rows if r["ds"] == ds):
            rr = [r for r in rows if r["ds"] == ds and r["name"] == name]
            seeds = sorted({r["seed"] for r in rr})
            cells = []
            keys = [k for k, v in rr[0].items() if k not in ("seed", "c", "t") and isinstance(v, float)]
            for key in keys:
                means = [np.mean([r[key] for r in rr if r["seed"] == s]) for s in seeds]
                cells.append(f"{key} {np.mean(means):.2f} ± {np.std(means):.2f}")
            print(f"{ds:6s} {name:8s} seeds {seeds} rows {len(rr):3d} | " + " | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="defaults")
    p.add_argument("--dataset", choices=("digits", "cifar", "cifar-full", "mtd"), default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-restart-empty", action="store_true")
    p.add_argument("--pixel", action="store_true", help="raw-pixel 1-NN rows only (no fit)")
    p.add_argument("--summary", type=Path, help="print the summary of a results file and exit")
    args = p.parse_args(argv)
    if args.summary is not None:
        summary(args.summary)
    elif args.pixel:
        pixel_rows(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

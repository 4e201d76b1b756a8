"""Semi-supervised heads (Eq. 10-12) trained several ways on one stage-1 encoder per fit.

Each fit (``AnoMem`` defaults with ``--set`` overrides, labelled anomalies at
ratio ``--gamma``, no hold-out; image sets and budgets of :mod:`experiments.tasks`)
is scored as fitted (row ``default``), one-class on the same memories (the
heads removed: row ``oc``, the calibrated fusion the heads are added to, and
``oc_raw``, the plain Eq. 13), and once per ``--variant NAME KEY=VALUE[,KEY=VALUE]``:
a copy of the fitted network calibrated (with ``semi_score="heads+oc"``) and
its heads trained again (:func:`anomem.stages.stage2.fit_heads`) under the
variant's configuration; row ``knn`` is a 1-NN on the fitted encoder over the
training normals, ``pixel`` one on raw pixels at the images' own side.
``--oc-weights W ...`` adds rows ``NAME@W``: every ``heads+oc`` row scored again
with the one-class score weighted W beside the clipped heads (the model's
``oc_weight``, which a fit sets by ``oc_evidence``).  Stage 1 and consolidation are shared, so the rows
differ only in stage 2.  With ``--models DIR`` each fit is saved there and
later runs load it, so new head variants cost no stage 1.  One JSON line per
class holds every row's test AUROC.

    python -m experiments.semi_supervised_heads.head_probe --dataset digits --seed 0 \\
        --variant fused calibration=fused --variant bal head_sampling=balanced
    python -m experiments.variants.variant_probe --summary experiments/semi_supervised_heads/head_probe.jsonl

The rows (digits seeds 0-2; CIFAR-10 at the full ``cpu`` preset, ``--dataset
cifar-full``, seeds 0-2) are in ``head_probe.jsonl`` beside this file.  Its ``rot``
and ``rotbal`` columns trained the heads also on one rotated copy of every
normal image, labelled anomalous (``head_pseudo_anomalies=rotation``, at commit
ed89547; removed since, as it lost on both image sets), and its ``heads_appended``
rows batched the labelled anomalies apart in stage 1 (``anomaly_batches=appended``,
at commit 376d142, removed since).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from experiments.tasks import task_source


def run(args: argparse.Namespace) -> None:
    import torch
    from sklearn.metrics import roc_auc_score

    from anomem import AnoMem
    from anomem.baselines.knn import KNNDetector
    from anomem.baselines.pixel_knn import PixelKNN
    from anomem.config import parse_override
    from anomem.data.convert import to_image_tensor, to_normal_flags
    from anomem.presets import input_side
    from anomem.stages.common import RunOptions
    from anomem.stages.stage2 import fit_heads

    torch.set_num_threads(1)
    overrides = dict(parse_override(o) for o in args.set)
    variants = {name: dict(parse_override(kv) for kv in spec.split(",")) for name, spec in args.variant}
    task_of, preset, budget = task_source(args.dataset, args.seed, args.gamma)
    for c in args.classes:
        t0 = time.time()
        t = task_of(c)
        stem = f"{args.name}_{args.dataset}_g{args.gamma}_s{args.seed}_c{c}"
        saved = args.models and args.models / f"{stem}.anomem"
        if saved is not None and saved.is_file():
            det = AnoMem.load(saved)
        else:
            det = AnoMem(preset, seed=args.seed, **budget, **overrides).fit(
                t.x_train, t.labels_train, validation_fraction=0.0, progress=False)
            if saved is not None:
                det.save(saved)
        fitted = det.network
        x = to_image_tensor(t.x_train, fitted.config.backbone.image_size, "x_train")
        y = to_normal_flags(t.labels_train, len(x), "labels_train")
        row = {"default": det.decision_function(t.x_test)}
        weighted = {"default": fitted}
        for name, kv in {"oc": None, **variants}.items():
            net = copy.deepcopy(fitted)
            if kv is None:                 # the one-class score of the same network: no heads
                net.heads = None
                raw = copy.deepcopy(net)
                raw.score_mean.zero_()
                raw.score_std.fill_(1.0)
                det.network_ = raw
                row["oc_raw"] = det.decision_function(t.x_test)
            else:
                net.config = net.config.replace(**kv)
                torch.manual_seed(args.seed)  # the same heads' start whether the fit was run or loaded
                fit_heads(net, x, y, {}, RunOptions())
                weighted[name] = net
            det.network_ = net
            row[name] = det.decision_function(t.x_test)
        for name, net in weighted.items():
            if net.config.scoring.semi_score != "heads+oc":
                continue
            kept = net.oc_weight.clone()
            det.network_ = net
            for w in args.oc_weights:
                net.oc_weight.fill_(w)
                row[f"{name}@{w:g}"] = det.decision_function(t.x_test)
            net.oc_weight.copy_(kept)
        det.network_ = fitted
        knn = KNNDetector(preset, k=1, encoder=det).fit(t.x_train, t.labels_train)
        row["knn"] = knn.decision_function(t.x_test)
        pixel = PixelKNN(size=input_side(t.x_train), k=1).fit(t.x_train, t.labels_train)
        row["pixel"] = pixel.decision_function(t.x_test)
        print(json.dumps({"name": args.name, "ds": args.dataset, "seed": args.seed, "c": c,
                          **{k: round(100 * roc_auc_score(t.labels_test, v), 2) for k, v in row.items()},
                          "n_anomalies": int((y == 0).sum()), "t": round(time.time() - t0)}),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="heads")
    p.add_argument("--dataset", choices=("digits", "cifar", "cifar-full", "mtd", "mtd-k5"), default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float, default=0.05)
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--models", type=Path, default=None,
                   help="folder of fitted detectors, one per --name, image set, gamma, seed and class: "
                        "loaded from there when present, else fitted and saved there")
    p.add_argument("--oc-weights", type=float, nargs="*", default=[],
                   help="also score every heads+oc row with the one-class score weighted by each of "
                        "these (the model's oc_weight), as rows NAME@W")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "KEY=VALUE,..."))
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

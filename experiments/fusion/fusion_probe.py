"""Per-scale normalisation and fusion rules of the one-class score, on one encoder per fit.

Each fit (``AnoMem`` one-class defaults, no hold-out; image sets and budgets
of :mod:`experiments.tasks`) keeps every scale's Eq. 9 score on the test images
and the out-of-fold scores of the training normals
(:func:`anomem.stages.stage2.out_of_fold_scores`, what ``calibrate`` uses).
One JSON line per class gives the AUROC of each rule, all on the same scores:

* ``alpha``: Eq. 13, sum_s alpha(s) s(s) / sum_s alpha(s), alpha(s) = 2^(s-1)
  with the image-level scales after the maps (``image_alpha="last"``);
* ``stage_alpha``: Eq. 13 with each image-level scale at the alpha of the stage
  it pools (``image_alpha="stage"``);
* ``equal``: the plain mean over scales;
* ``z_alpha`` / ``z_stage`` / ``z_equal`` / ``z_max``: each scale standardised
  by the mean and std of its out-of-fold normal scores (``calibrate=true``),
  then fused as ``alpha``, ``stage_alpha``, averaged, or the maximum;
* ``robust_alpha``: standardised by median and 1.4826 x MAD instead;
* ``fisher``: -sum_s log p(s), p(s) the share of out-of-fold normals scoring
  at least as high (Fisher's combination of per-scale p-values);
* ``image_alpha`` / ``maps_alpha``: the image-level / map scales alone, alpha-fused;
* ``knn``: 1-NN on the same encoder (``KNNDetector(k=1, encoder=det)``).

With ``score_views``, every rule fuses the scales of every view (the mean over
views of the rule's weighted sum; ``z_max`` and ``fisher`` take every view's
scales as scales of their own).  ``--set`` overrides the fit's config.

    python -m experiments.fusion.fusion_probe --dataset digits --seed 0 \\
        >> experiments/fusion/fusion_probe.jsonl
    python -m experiments.variants.variant_probe --summary experiments/fusion/fusion_probe.jsonl

(the rows of seeds 0-2 on every image set are in ``fusion_probe.jsonl`` beside this file;
``name`` tells the defaults they ran with.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from experiments.tasks import task_source


def rules(test: np.ndarray, oof: np.ndarray, stage_of: list[int], n_maps: int,
          views: int = 1) -> dict[str, np.ndarray]:
    """Every fusion rule's image score from per-scale scores (n, S) and out-of-fold normals (m, S).

    ``stage_of``: the memory stage (0-based) each scale of one view comes from,
    maps first (``n_maps`` of them); S = ``views`` x len(stage_of), view after view.
    """
    z = (test - oof.mean(0)) / oof.std(0).clip(1e-12)
    med = np.median(oof, 0)
    mad = 1.4826 * np.median(np.abs(oof - med), 0)
    ranked = np.sort(oof, 0)
    p = np.stack([(len(oof) - np.searchsorted(ranked[:, s], test[:, s]) + 1) / (len(oof) + 1)
                  for s in range(test.shape[1])], 1)
    image = np.tile(np.arange(len(stage_of)) >= n_maps, views)

    def w(weights: Any, mask: Any = True) -> np.ndarray:
        full = np.tile(np.asarray(weights, dtype=np.float64), views) * mask
        return full / full.sum()

    a = w(2.0 ** np.arange(len(stage_of)))
    st = w(2.0 ** np.asarray(stage_of))
    return {"alpha": test @ a, "stage_alpha": test @ st, "equal": test.mean(1),
            "z_alpha": z @ a, "z_stage": z @ st, "z_equal": z.mean(1),
            "z_max": z.max(1), "robust_alpha": ((test - med) / mad.clip(1e-12)) @ a,
            "fisher": -np.log(p).sum(1),
            "image_alpha": test @ w(2.0 ** np.arange(len(stage_of)), image),
            "maps_alpha": test @ w(2.0 ** np.arange(len(stage_of)), ~image)}


def run(args: argparse.Namespace) -> None:
    import torch
    from sklearn.metrics import roc_auc_score

    from anomem import AnoMem
    from anomem.baselines.knn import KNNDetector
    from anomem.config import parse_override
    from anomem.data.convert import to_image_tensor
    from anomem.scales import pooled_stages
    from anomem.stages.common import RunOptions
    from anomem.stages.stage2 import out_of_fold_scores

    torch.set_num_threads(1)
    task_of, preset, budget = task_source(args.dataset, args.seed)
    overrides = dict(parse_override(o) for o in args.set)
    for c in args.classes:
        t0 = time.time()
        t = task_of(c)
        det = AnoMem(preset, seed=args.seed, **budget, **overrides).fit(
            t.x_train, t.labels_train, validation_fraction=0.0, progress=False)
        net = det.network
        x = to_image_tensor(t.x_train, net.config.backbone.image_size, "x_train")
        normals = x[torch.as_tensor(np.asarray(t.labels_train)) == 0]
        oof = out_of_fold_scores(net, normals, RunOptions()).numpy().astype(np.float64)
        n_maps = net.n_maps
        scores: dict[str, Any] = rules(det.scale_scores(t.x_test), oof,
                                       [*range(n_maps), *pooled_stages(net.config)], n_maps,
                                       len(net.views))
        scores["knn"] = KNNDetector(preset, k=1, encoder=det).fit(
            t.x_train, t.labels_train).decision_function(t.x_test)
        print(json.dumps({"name": args.name, "ds": args.dataset, "seed": args.seed, "c": c,
                          **{k: round(100 * roc_auc_score(t.labels_test, v), 2)
                             for k, v in scores.items()},
                          "t": round(time.time() - t0)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("digits", "cifar", "cifar-full", "mtd"), default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--name", default="fusion", help="the rows' name (which defaults they ran with)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

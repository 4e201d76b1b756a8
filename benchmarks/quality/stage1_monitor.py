"""1-NN AUROC on AnoMem's encoder after every stage-1 epoch, at the full ``cpu`` preset on CIFAR-10.

One one-class fit (``AnoMem("cpu", seed=S)``, every training image of the
class, no hold-out).  At the end of each stage-1 epoch the encoder (in eval
mode) scores a fixed draw of 2,000 test images (numpy seed 0) with
:class:`anomem.baselines.knn.KNNDetector` (k = 1, the normal training images
as its bank), and that AUROC is printed beside the epoch's stage-1 statistics; the last
line gives the fitted model's fused score (Eq. 13) on the same test images.
It shows whether more stage-1 training makes the features better for
detection on that class.

    python benchmarks/quality/stage1_monitor.py --cls 0 --seed 2 >> stage1_monitor.jsonl

(rows for airplane, seeds 0 and 2, and automobile, seeds 0 and 1, are in
``stage1_monitor.jsonl`` beside this file.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.metrics import roc_auc_score

    import anomem.stages.stage1 as stage1
    from anomem import AnoMem
    from anomem.baselines.knn import KNNDetector
    from anomem.data.convert import to_image_tensor
    from anomem.protocols.one_vs_all import make_one_vs_all
    from anomem.protocols.runner import load_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cls", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, split = load_dataset("cifar10_jpeg")
    t = make_one_vs_all(split, args.cls, 0.0, args.seed)
    x_train = to_image_tensor(t.x_train, 32, "x_train")
    test = np.random.default_rng(0).choice(len(t.labels_test), 2000, replace=False)
    x_test = to_image_tensor(t.x_test, 32, "x_test")[test]
    y_test = np.asarray(t.labels_test)[test]

    def knn_auroc(model: torch.nn.Module) -> float:
        """KNNDetector(k=1) on the encoder being trained (wrapped in an unfitted AnoMem)."""
        shell = AnoMem(model.config)
        shell.model = model
        knn = KNNDetector(model.config, k=1, encoder=shell).fit(x_train, t.labels_train)
        return 100 * roc_auc_score(y_test, knn.decision_function(x_test))

    end_epoch = stage1._end_epoch

    def monitored(model, opt, epoch, *rest, **kw):  # noqa: ANN001, ANN202
        row = end_epoch(model, opt, epoch, *rest, **kw)
        training = model.training
        model.eval()
        auroc = knn_auroc(model)
        model.train(training)
        print(json.dumps({"c": args.cls, "seed": args.seed, "epoch": epoch + 1, "knn": round(auroc, 2),
                          **{k: round(v, 4) for k, v in row.items() if isinstance(v, float)}}),
              flush=True)
        return row

    stage1._end_epoch = monitored
    t0 = time.time()
    det = AnoMem("cpu", seed=args.seed).fit(t.x_train, t.labels_train, validation_fraction=0.0,
                                            progress=False)
    fused = 100 * roc_auc_score(y_test, det.decision_function(t.x_test)[test])
    print(json.dumps({"c": args.cls, "seed": args.seed, "final_fused": round(fused, 2),
                      "t": round(time.time() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

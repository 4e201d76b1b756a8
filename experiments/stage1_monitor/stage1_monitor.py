"""1-NN AUROC on AnoMem's encoder after every stage-1 epoch, at the full ``cpu`` preset on CIFAR-10.

One one-class fit (``AnoMem("cpu", seed=S)``, every training image of the
class, no hold-out).  Before training (epoch 0: the network as the fit
initialises it) and at the end of each stage-1 epoch (``RunOptions.on_epoch``)
the encoder (in eval mode) scores a fixed draw of 2,000 test images (numpy seed 0) with
:class:`anomem.baselines.knn.KNNDetector` (k = 1, the normal training images
as its bank), and that AUROC is printed beside the epoch's stage-1 statistics; the last
line gives the fitted model's fused score (Eq. 13) on the same test images.
It shows whether more stage-1 training makes the features better for
detection on that class.

    python -m experiments.stage1_monitor.stage1_monitor --cls 0 --seed 2 \\
        >> experiments/stage1_monitor/stage1_monitor.jsonl

``--init-only`` prints the epoch-0 row alone.  At epoch 0 the BatchNorm
statistics are those of the training images (:func:`with_data_statistics`).

(rows for airplane, seeds 0 and 2, and automobile, seeds 0 and 1, are in
``stage1_monitor.jsonl`` beside this file; they ran before rotated
pseudo-anomalies became the default, i.e. as ``--set pseudo_anomalies=none``.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def with_data_statistics(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """``model`` with every BatchNorm's running mean and variance set to the average over ``images``.

    An initialised network's running statistics (0 and 1) are not those of any
    data; one train-mode pass without gradients over the images, with
    cumulative averaging, gives the untrained weights the statistics that
    training would start to track.
    """
    from anomem.data.convert import batches

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for sl in batches(len(images), 256):
            model.features(images[sl].float().div(255))
    for m in norms:
        m.momentum = 0.1
    return model


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from anomem import AnoMem
    from anomem.baselines.knn import KNNDetector
    from anomem.config import get_config, parse_override
    from anomem.data.convert import to_image_tensor
    from anomem.protocols.one_vs_all import make_one_vs_all
    from anomem.protocols.runner import load_dataset
    from anomem.stages.common import RunOptions
    from anomem.torch_model import AnoMemModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cls", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the cpu preset, e.g. pseudo_anomalies=none")
    p.add_argument("--init-only", action="store_true",
                   help="print only the epoch-0 row (the encoder as initialised) and stop")
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
        shell.network_ = model
        knn = KNNDetector(model.config, k=1, encoder=shell).fit(x_train, t.labels_train)
        return 100 * roc_auc_score(y_test, knn.decision_function(x_test))

    def emit(epoch: int, model: torch.nn.Module, row: dict[str, float]) -> None:
        training = model.training
        model.eval()
        auroc = knn_auroc(model)
        model.train(training)
        print(json.dumps({"c": args.cls, "seed": args.seed, "epoch": epoch, "knn": round(auroc, 2),
                          **{k: round(v, 4) for k, v in row.items() if isinstance(v, float)}}),
              flush=True)

    overrides = dict(parse_override(o) for o in args.set)
    config = get_config("cpu", {"seed": args.seed, **overrides})
    torch.manual_seed(config.runtime.seed)   # as fit does before it builds the network: its initial weights
    emit(0, with_data_statistics(AnoMemModel(config), x_train), {})
    if args.init_only:
        return 0
    t0 = time.time()
    det = AnoMem("cpu", seed=args.seed, **overrides).fit(
        t.x_train, t.labels_train, validation_fraction=0.0,
        options=RunOptions(on_epoch=lambda model, row: emit(int(row["epoch"]), model, row)))
    fused = 100 * roc_auc_score(y_test, det.decision_function(t.x_test)[test])
    print(json.dumps({"c": args.cls, "seed": args.seed, "final_fused": round(fused, 2),
                      "t": round(time.time() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

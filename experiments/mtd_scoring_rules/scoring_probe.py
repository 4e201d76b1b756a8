"""Which per-position scoring rule localises MTD defects on one fitted encoder?

Fits a one-class detector (``mtd`` preset plus ``--set`` overrides, stage 1
for ``--epochs`` epochs; 0 = the untrained, randomly initialised encoder) on
the training defect-free tiles of the seeded split of
``benchmarks/localisation/run_mtd.py`` (whose :func:`feature_maps` and
:func:`nearest_patch` it uses), then
scores the test split with five heatmaps built on the same feature maps z(s):

* ``deviation``: ||Delta(s)_ij||, AnoMem's one-class heatmap (Eq. 8 per position);
* ``standardised deviation``: (||Delta(s)_ij|| - mean_ij) / std_ij, mean and
  std over the training tiles at each position;
* ``distance to mean``: ||z^_ij - mean z^||, z^ the L2-normalised feature;
* ``nearest training patch``: distance from z^_ij to the closest of ``--bank``
  normalised training vectors drawn from all positions (the memory-bank
  family, e.g. PatchCore, that stores the training set);
* ``feature norm``: ||z_ij||.

Every rule goes through the same fusion as :func:`anomem.localisation.anomaly_map`
(alpha(s) weights, bilinear upsampling, gaussian sigma 4 px); the image score
is the heatmap's maximum.  ``--recalibrate-bn`` resets the encoder's BatchNorm
running statistics and recomputes them on the clean training tiles before
scoring (an untrained encoder otherwise keeps the initial mean 0 / variance 1,
so its BatchNorm layers are the identity).  One JSON line per command is kept in ``--results``
(a rerun of the same command replaces its line).

Example (the committed rows):
    python -m experiments.mtd_scoring_rules.scoring_probe --epochs 0
    python -m experiments.mtd_scoring_rules.scoring_probe --epochs 6
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from anomem import AnoMem, __version__
from anomem.config import parse_override, to_dict
from anomem.data.convert import to_image_tensor
from anomem.data.mtd import MTDImages, read_mtd, split_mtd
from anomem.localisation import fuse_maps
from anomem.protocols.results import append_result
from anomem.reports.pixel_metrics import localisation_metrics
from anomem.stages.common import RunOptions, map_batches
from benchmarks.localisation.run_mtd import feature_maps, nearest_patch


@torch.no_grad()
def recalibrate_batchnorm(det: AnoMem, images: np.ndarray) -> None:
    """Recompute every BatchNorm running mean/variance as the plain average over ``images``."""
    layers = [m for m in det.network_.encoder.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average over the batches
    x = to_image_tensor(images, det.network_.config.backbone.image_size, "images")

    def in_train_mode(m: torch.nn.Module, b: torch.Tensor) -> None:
        m.encoder.train()                       # map_batches sets eval mode; BatchNorm must update
        m.features(b)

    map_batches(det.network_, x, RunOptions(), in_train_mode, batch_size=64)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    det.network_.eval()


def rules(det: AnoMem, train: MTDImages, test: MTDImages, bank: int,
          seed: int) -> dict[str, list[torch.Tensor]]:
    """Per-scale (N, H(s), W(s)) maps of each rule on the test tiles."""
    ztr, dtr = feature_maps(det, train.images)
    zte, dte = feature_maps(det, test.images)
    ntr = [F.normalize(z, dim=1) for z in ztr]
    nte = [F.normalize(z, dim=1) for z in zte]
    mean = [z.mean((0, 2, 3)).view(1, -1, 1, 1) for z in ntr]
    dev_tr = [d.norm(dim=1) for d in dtr]
    return {
        "deviation": [d.norm(dim=1) for d in dte],
        "standardised deviation": [(d.norm(dim=1) - t.mean(0)) / (t.std(0) + 1e-6)
                                   for d, t in zip(dte, dev_tr)],
        "distance to mean": [(z - m).norm(dim=1) for z, m in zip(nte, mean)],
        "nearest training patch": [nearest_patch(a, b, bank, seed) for a, b in zip(ntr, nte)],
        "feature norm": [z.norm(dim=1) for z in zte],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=6, help="stage-1 epochs (0: untrained encoder)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--bank", type=int, default=20_000, help="training vectors in the nearest-patch bank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="recompute BatchNorm statistics on the clean training tiles before scoring")
    p.add_argument("--results", default="experiments/mtd_scoring_rules/scoring_probe.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    split = split_mtd(read_mtd(side=128), 0.7, args.seed)
    overrides = dict(parse_override(o) for o in args.overrides)
    t0 = time.perf_counter()
    det = AnoMem("mtd", seed=args.seed, stage1_epochs=args.epochs, **overrides).fit(
        split.train.images, validation_fraction=0.0)
    fit_s = time.perf_counter() - t0
    if args.recalibrate_bn:
        recalibrate_batchnorm(det, split.train.images)
    print("stage-1 loss per epoch:", [round(h["loss"], 3) for h in det.history_["stage1"]], flush=True)
    n_maps = det.network_.n_maps            # image-level scales have no position (as in anomaly_map)
    weights = (det.network_.alphas / det.network_.score_std)[:n_maps]
    out = {}
    for name, maps in rules(det, split.train, split.test, args.bank, args.seed).items():
        heat = fuse_maps(maps[:n_maps], weights / weights.sum(), (128, 128), 4.0).numpy()
        res = localisation_metrics(split.test.labels, heat.reshape(len(heat), -1).max(1),
                                   split.test.masks, heat, split.test.pixel_valid)
        out[name] = res
        print(f"{name:24s} image {res['image_auroc']:.3f}  pixel {res['pixel_auroc']:.3f}  "
              f"AUPRO {res['aupro']:.3f}", flush=True)
    row = {"command": "python -m experiments.mtd_scoring_rules.scoring_probe "
                      + " ".join(sys.argv[1:] if argv is None else argv),
           "epochs": args.epochs, "seed": args.seed, "bank": args.bank,
           "recalibrate_bn": args.recalibrate_bn, "fit_s": round(fit_s, 1),
           "stage1_loss": [round(h["loss"], 3) for h in det.history_["stage1"]],
           "config": to_dict(det.config_), "anomem": __version__, "torch_threads": 1,
           "machine": f"{platform.machine()}, CPU only", "results": out}
    append_result(args.results, {"cell": row["command"], **row})   # a rerun replaces its row
    return 0


if __name__ == "__main__":
    sys.exit(main())

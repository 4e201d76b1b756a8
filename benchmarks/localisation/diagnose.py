"""Where AnoMem's heatmap loses on Magnetic Tile Defects: one fitted encoder, many maps.

Loads a one-class detector fitted by ``run_mtd.py --save-model FILE`` (the same
``--seed`` draws the same split) and scores the test tiles with map variants
that need no new training, each measured per defect type (pixel AUROC and AUPRO):

* ``anomem``: the package's fused heatmap (``AnoMem.anomaly_map``);
* ``scale s``: one memory scale's deviation norms alone (resolution: 16 x 16 against 8 x 8);
* ``equal fusion``: the scales weighed equally instead of by Eq. 13's alphas;
* ``hopfield recall``: Delta from Eq. 1 at the memory's beta (the paper) instead of
  the nearest prototype;
* ``k-means K``: distance to the nearest of K k-means centroids of the training
  vectors of each scale (what the memory stores: how many prototypes);
* ``1-NN any position``: distance to the nearest of ``--bank`` training vectors
  (the limit of many position-blind prototypes);
* ``1-NN same position``: distance to the nearest training vector at the same
  map position (a position-aware memory);
* ``no border``: the ``anomem`` map with an 8-pixel frame left out of the pixel
  metrics (does the border cost anything?).

``--quick`` scores only the package's heatmap, under each reading of the heatmap keys
that the validation compares (``experiments.validation.heatmaps.READINGS``: every map
scale or the finest, without or with a mirrored margin).

Beside them: the raw-pixel cells (1-NN) at cell sides 4, 8 and 16, the same
question of resolution for a map that learns nothing.  Image scores are the
detector's own for every AnoMem row (pixel metrics do not use them).

    python -m benchmarks.localisation.diagnose --model FILE --seed S --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anomem import AnoMem
from anomem.data.mtd import MTD_TYPES, MTDImages, read_mtd, split_mtd
from anomem.localisation import fuse_maps
from anomem.serialization import atomic_write_text
from benchmarks.localisation.run_mtd import evaluate, feature_maps, nearest_patch, pixel_knn, table
from experiments.validation.heatmaps import READINGS, split_reading


def kmeans_distance(train: torch.Tensor, test: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Distance of every normalised test vector to the nearest of ``k`` k-means centroids of the
    (normalised) training vectors, (N, H, W)."""
    from sklearn.cluster import KMeans
    vecs = F.normalize(train, dim=1).permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    sub = vecs[torch.randperm(len(vecs), generator=torch.Generator().manual_seed(seed))[:10_000]]
    centres = torch.from_numpy(KMeans(k, n_init=1, random_state=seed).fit(sub.numpy())
                               .cluster_centers_).float()
    q = F.normalize(test, dim=1).permute(0, 2, 3, 1).reshape(-1, test.shape[1])
    return torch.cdist(q, centres).min(1).values.view(test.shape[0], *test.shape[2:])


def same_position_distance(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Distance of every normalised test vector to the nearest training vector at its own (i, j)."""
    a = F.normalize(train, dim=1).permute(2, 3, 0, 1).flatten(0, 1)      # (HW, N_train, C)
    b = F.normalize(test, dim=1).permute(2, 3, 0, 1).flatten(0, 1)       # (HW, N_test, C)
    d = torch.cdist(b, a).min(-1).values                                 # (HW, N_test)
    return d.T.reshape(test.shape[0], *test.shape[2:])


def variants(det: AnoMem, train: MTDImages, test: MTDImages, sigma: float, bank: int,
             seed: int) -> dict[str, np.ndarray]:
    """Every heatmap variant of the module docstring except the raw-pixel rows, (N, S, S) each."""
    net = det.network_
    n_maps, side = net.n_maps, test.images.shape[1:]
    alphas = net.alphas[:n_maps] / net.alphas[:n_maps].sum()
    z_tr, _ = feature_maps(det, train.images)
    z_te, d_te = feature_maps(det, test.images)
    z_tr, z_te, d_te = z_tr[:n_maps], z_te[:n_maps], d_te[:n_maps]
    norms = [d.norm(dim=1) for d in d_te]
    out = {"anomem": det.anomaly_map(test.images, sigma=sigma)}
    for s, m in enumerate(norms):
        out[f"scale {s + 1} ({m.shape[-1]} x {m.shape[-2]})"] = fuse_maps(
            [m], torch.ones(1), side, sigma).numpy()
    out["equal fusion"] = fuse_maps(norms, torch.full((n_maps,), 1 / n_maps), side, sigma).numpy()
    scorings = [net.memory(s).scoring for s in range(n_maps)]
    for s in range(n_maps):
        net.memory(s).scoring = "hopfield"
    hop = [d.norm(dim=1) for d in feature_maps(det, test.images)[1][:n_maps]]
    for s, kind in enumerate(scorings):
        net.memory(s).scoring = kind
    out["hopfield recall"] = fuse_maps(hop, alphas, side, sigma).numpy()
    for k in (64, 256):
        out[f"k-means {k}"] = fuse_maps([kmeans_distance(a, b, k, seed) for a, b in zip(z_tr, z_te)],
                                        alphas, side, sigma).numpy()
    unit = [(F.normalize(a, dim=1), F.normalize(b, dim=1)) for a, b in zip(z_tr, z_te)]
    out["1-NN any position"] = fuse_maps([nearest_patch(a, b, bank, seed) for a, b in unit],
                                         alphas, side, sigma).numpy()
    out["1-NN same position"] = fuse_maps([same_position_distance(a, b) for a, b in zip(z_tr, z_te)],
                                          alphas, side, sigma).numpy()
    return out


def heatmap_readings(det: AnoMem, test: MTDImages, sigma: float) -> dict[str, np.ndarray]:
    """``AnoMem.anomaly_map`` of ``test`` under each reading of :data:`READINGS`."""
    out = {}
    for name, reading in READINGS.items():
        keys, own = split_reading(reading, det.network_.config.backbone.image_size)
        det.network_.config = det.network_.config.replace(**keys)
        out[f"anomem, {name}"] = det.anomaly_map(test.images, sigma=sigma if own is None else own)
    return out


def defect_pixel_shares(test: MTDImages) -> dict[str, float]:
    """Each defect type's share of the test split's defective pixels: the weight it has in
    the pooled pixel AUROC (AUPRO weighs every region alike)."""
    counts = {name: int(test.masks[test.types == t].sum()) for t, name in enumerate(MTD_TYPES)}
    total = sum(counts.values())
    return {name: round(c / total, 4) for name, c in counts.items()}


def frame_masked(test: MTDImages, width: int) -> MTDImages:
    """A copy of ``test`` without an outer frame of ``width`` pixels (cut off its maps alike)."""
    masks = test.masks[:, width:-width, width:-width]
    return MTDImages(images=test.images[:, width:-width, width:-width], masks=masks,
                     types=test.types, has_mask=test.has_mask & masks.any(axis=(1, 2)),
                     names=test.names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a detector saved by run_mtd.py --save-model")
    p.add_argument("--seed", type=int, required=True, help="the seed run_mtd.py fitted it with")
    p.add_argument("--out", required=True, help="folder for diagnosis.json and diagnosis.md")
    p.add_argument("--train-fraction", type=float, default=0.7)
    p.add_argument("--sigma", type=float, default=4.0)
    p.add_argument("--bank", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="only the package's heatmap under each reading of the heatmap keys")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    det = AnoMem.load(args.model)
    data = read_mtd(side=det.config_.backbone.image_size)
    split = split_mtd(data, args.train_fraction, args.seed)
    scores = det.decision_function(split.test.images, batch_size=64)
    rows: dict[str, Any] = {}
    maps = (heatmap_readings(det, split.test, args.sigma) if args.quick
            else variants(det, split.train, split.test, args.sigma, args.bank, args.seed))
    for name, m in maps.items():
        rows[name] = evaluate(split.test, scores, m)
    if not args.quick:
        rows["anomem, 8-px frame left out"] = evaluate(frame_masked(split.test, 8), scores,
                                                        maps["anomem"][:, 8:-8, 8:-8])
        for patch in (4, 8, 16):
            sc, mp = pixel_knn(split.train, split.test, args.sigma, args.bank, patch, args.seed)
            rows[f"raw-pixel cells {patch} x {patch}"] = evaluate(split.test, sc, mp)
    normal = next(iter(maps.values()))[split.test.types < 0]          # the package's map
    edge = {"top rows": float(normal[:, :8].mean()), "bottom rows": float(normal[:, -8:].mean()),
            "left columns": float(normal[:, :, :8].mean()), "right columns": float(normal[:, :, -8:].mean()),
            "centre": float(normal[:, 32:-32, 32:-32].mean())}
    shares = defect_pixel_shares(split.test)
    out = Path(args.out)
    atomic_write_text(out / "diagnosis.json", json.dumps(
        {"command": "python -m benchmarks.localisation.diagnose " + " ".join(argv or sys.argv[1:]),
         "rows": rows, "normal_map_means": edge,
         "defect_pixel_shares": shares}, indent=1) + "\n")
    md = ("Image AUROC / pixel AUROC / AUPRO, sigma = " f"{args.sigma} px.\n\n" + table(rows)
          + "\nMean heatmap of the test normals by region: "
          + ", ".join(f"{k} {v:.4f}" for k, v in edge.items()) + ".\n\nShare of the defective "
          "pixels: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
          + "\n")
    atomic_write_text(out / "diagnosis.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Localisation benchmark on Magnetic Tile Defects: image AUROC, pixel AUROC, AUPRO.

Protocols (one seeded split, see :func:`anomem.data.mtd.split_mtd`):

* **one-class**: stage 1 on the training defect-free tiles only; heatmaps from
  the per-position deviation norms.
* **semi-supervised**: the same tiles plus ``--labelled-per-type`` labelled
  defects of every type; scale heads trained on them (Eq. 10-12), heatmaps from
  the per-position heads.
* **cross-type**: labelled defects of four types only, tested on the fifth.

Beside AnoMem's one-class rows stand two 1-NN references on the same split:
on the fitted encoder's features and on raw pixels (:func:`encoder_knn`,
:func:`pixel_knn`).

One more one-class row, ``one-class x raw-pixel cells`` (:data:`FUSED`): the
geometric mean of AnoMem's map and the raw-pixel cells' map, pixel by pixel,
with AnoMem's image scores.  Pixel AUROC and AUPRO read only the order of the
pixels, which a product keeps whatever each map's scale: the two maps need no
common calibration.  It asks whether the learned map and the learning-free one
find different defects.

To fit the CPU budget, the semi-supervised and cross-type detectors reuse the
one-class stage 1 (trained on normals only) and train only their heads; the
estimator's own semi-supervised ``fit`` would also show the labelled defects
to stage 1 (as memory-free negatives, Eq. 3).  The one-class model's scores on
each protocol's test set are reported beside the heads' for comparison.

With ``--calibration-fraction F`` > 0, a seeded share F of the training tiles is held
out of the fit, and two more rows read the one-class and the heads' maps standardised
pixel by pixel with the mean and standard deviation of those tiles' maps
(``scoring.heatmap_calibration="position"``, :func:`anomem.heatmaps.fit_map_calibration`,
at the smoothing ``--sigma``, applied after it, as the package does).
Every other row reads the maps as computed, from the same fit.

Under ``--set scoring.heatmap_reader=head`` every map is the position head's
(:mod:`anomem.stages.position_head`, trained on pasted defects in the normal training tiles);
the semi-supervised detectors keep the one-class detector's head unless ``--head-masks``
retrains it with the labelled defects' masks beside the pasted defects.  ``--model FILE``
reads the one-class detector that ``--save-model FILE`` saved (same ``--seed``, ``--preset``
and ``--set``) instead of fitting it again; saved with another position head
(``scoring.heatmap_reader``, ``scoring.head_stages``), it gets the head ``--set`` asks for,
trained on it (:func:`read_fitted`).

Writes ``results.json``, ``results.md`` and ``overlays.png`` into ``--out``.

Example (the committed run):
    python benchmarks/localisation/run_mtd.py --out benchmarks/localisation
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from anomem import AnoMem, __version__
from anomem.baselines.knn import KNNDetector
from anomem.baselines.pixel_knn import PixelKNN
from anomem.config import parse_override, to_dict
from anomem.data.convert import to_image_tensor, to_normal_flags
from anomem.data.mtd import MTD_TYPES, MTDImages, read_mtd, split_mtd
from anomem.detector import resolve_config
from anomem.heatmaps import fit_map_calibration
from anomem.localisation import fuse_maps, gaussian_smooth, standardise_pixels
from anomem.reports.pixel_metrics import localisation_metrics
from anomem.reports.report import overlay
from anomem.serialization import atomic_write_bytes, atomic_write_text
from anomem.stages.common import RunOptions, map_batches
from anomem.stages.position_head import train_position_head
from anomem.stages.stage2 import fit_heads

SIGMAS = (0.0, 4.0, 8.0)


#: the row of AnoMem's one-class map fused with the raw-pixel cells' map (geometric mean)
FUSED = "one-class x raw-pixel cells"


def feature_maps(det: AnoMem, images: np.ndarray) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """z(s) and Delta(s) of every image, per memory scale, (N, C, H, W) each."""
    model = det.network_
    x = to_image_tensor(images, model.config.backbone.image_size, "images")

    def both(m: torch.nn.Module, b: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        zs = m.features(b)
        return zs, [m.memory(s).deviation(z) for s, z in enumerate(zs)]

    out = map_batches(model, x, RunOptions(), both, batch_size=64)
    scales = range(len(out[0][0]))
    return ([torch.cat([z[s] for z, _ in out]) for s in scales],
            [torch.cat([d[s] for _, d in out]) for s in scales])


def nearest_patch(train: torch.Tensor, test: torch.Tensor, bank: int, seed: int) -> torch.Tensor:
    """Distance of every normalised test vector to the closest of ``bank`` training vectors."""
    g = torch.Generator().manual_seed(seed)
    vecs = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    vecs = vecs[torch.randperm(len(vecs), generator=g)[:bank]]
    q = test.permute(0, 2, 3, 1).reshape(-1, test.shape[1])
    d = torch.cat([torch.cdist(q[i:i + 4096], vecs).min(1).values for i in range(0, len(q), 4096)])
    return d.view(test.shape[0], *test.shape[2:])


def evaluate(test: MTDImages, scores: np.ndarray, maps: np.ndarray,
             overall: bool = True) -> dict[str, Any]:
    """Metrics over the whole test set and per defect type (that type's defects + all test normals)."""
    out: dict[str, Any] = {}
    if overall:
        out["all"] = localisation_metrics(test.labels, scores, test.masks, maps, test.pixel_valid)
    for t, name in enumerate(MTD_TYPES):
        keep = (test.types < 0) | (test.types == t)
        if (test.types == t).any():
            out[name] = localisation_metrics(test.labels[keep], scores[keep], test.masks[keep],
                                             maps[keep], test.pixel_valid[keep])
    return out


STANDARDISED_WHAT = "standardised per pixel"
STANDARDISED = f"one-class, {STANDARDISED_WHAT}"


def standardised(net: Any, held: torch.Tensor, maps: np.ndarray, sigma: float) -> np.ndarray:
    """``maps`` (smoothed by ``sigma``) standardised pixel by pixel with the statistics of the
    maps of the normal images ``held`` under ``net``, at the same smoothing
    (:func:`anomem.heatmaps.fit_map_calibration`)."""
    fit_map_calibration(net, held, sigma)
    return standardise_pixels(torch.from_numpy(maps), net.map_loc, net.map_scale).numpy()


def score_and_map(det: AnoMem, images: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    return det.decision_function(images, batch_size=64), det.anomaly_map(images, sigma=sigma)


def with_heads(oc: AnoMem, train: MTDImages, seed_note: dict[str, Any],
               head_masks: bool = False) -> AnoMem:
    """A copy of the one-class detector with scale heads trained on ``train`` (Eq. 10-12);
    with ``head_masks``, its position head retrained with the labelled defects' masks
    beside the pasted defects (``AnoMem.fit(..., masks=...)``)."""
    det = copy.deepcopy(oc)
    det.network_ = det.network_.semi_supervised_copy()
    cfg = det.config_
    x = to_image_tensor(train.images, cfg.backbone.image_size, "train images")
    y = to_normal_flags(train.labels, len(x), "train labels")
    torch.manual_seed(cfg.runtime.seed)
    det.history_ = {"stage2": fit_heads(det.network_, x, y, seed_note, RunOptions())}
    if head_masks:
        marked = (train.types >= 0) & train.has_mask
        defects = (x[torch.from_numpy(marked)], torch.from_numpy(train.masks[marked]).bool())
        det.history_["position_head"] = train_position_head(det.network_, x[y == 1], RunOptions(),
                                                            defects)
    return det


#: The keys of the position head (``scoring``): a detector read with ``--model`` may have been
#: saved with other values of them, and then trains the head that ``--set`` asks for.
HEAD_KEYS = ("heatmap_reader", "head_stages")


def read_fitted(path: str, config: Any, normals: np.ndarray) -> AnoMem:
    """The one-class detector saved in ``path``, which must have been fitted with ``config``,
    but for :data:`HEAD_KEYS`: where those differ, its network is rebuilt with ``config``, its
    weights loaded but the position head's, and the head ``config`` asks for trained on the
    training tiles ``normals``, as the fit trains it last (its pixel threshold is then stale;
    this benchmark reads none)."""
    det = AnoMem.load(path, device="cpu")
    saved, wanted = to_dict(det.config_), to_dict(config)
    if saved == wanted:
        return det
    saved["scoring"].update({k: wanted["scoring"][k] for k in HEAD_KEYS})
    if saved != wanted:
        raise SystemExit(f"{path} was fitted with another configuration than --preset/--set/--seed "
                         f"give (beyond the position head's keys); pass the same ones it was saved with")
    net = det.network_.rebuilt(config, False, "position_head.").eval()
    det.config_, det.network_ = config, net
    if net.position_head is not None:
        x = to_image_tensor(normals, config.backbone.image_size, "train images")
        train_position_head(net, x, RunOptions(progress=True))
    return det


def encoder_knn(oc: AnoMem, train: MTDImages, test: MTDImages, sigma: float, bank: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-NN on the one-class detector's own encoder: image scores and heatmaps of ``test``.

    Image score: :class:`~anomem.baselines.knn.KNNDetector` (k = 1, the pooled
    scales).  Heatmap: each position's distance to the nearest of ``bank``
    normalised training vectors of its scale, fused and smoothed as AnoMem's
    heatmap is (:func:`anomem.localisation.fuse_maps`, the spatial scales' alphas).
    """
    scores = KNNDetector(oc.config_, k=1, encoder=oc).fit(train.images).decision_function(test.images)
    n_maps = oc.network_.n_maps
    unit = [torch.nn.functional.normalize(z, dim=1) for z in feature_maps(oc, train.images)[0][:n_maps]]
    query = [torch.nn.functional.normalize(z, dim=1) for z in feature_maps(oc, test.images)[0][:n_maps]]
    alphas = oc.network_.alphas[:n_maps]
    maps = fuse_maps([nearest_patch(a, b, bank, seed) for a, b in zip(unit, query)],
                     alphas / alphas.sum(), test.images.shape[1:], sigma)
    return scores, maps.numpy()


def pixel_knn(train: MTDImages, test: MTDImages, sigma: float, bank: int, patch: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-NN on raw pixels: image scores and heatmaps of ``test``, nothing learnt.

    Image score: :class:`~anomem.baselines.pixel_knn.PixelKNN` (k = 1) at the
    tiles' own side.  Heatmap: each ``patch`` x ``patch`` cell's (stride
    ``patch``) distance to the nearest of ``bank`` training cells, upsampled and
    smoothed like AnoMem's.
    """
    side = test.images.shape[1]
    scores = PixelKNN(size=side, k=1).fit(train.images).decision_function(test.images)

    def cells(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).float().div(255).unsqueeze(1)
        return torch.nn.functional.unfold(x, patch, stride=patch).view(
            len(x), patch * patch, side // patch, side // patch)

    near = nearest_patch(cells(train.images), cells(test.images), bank, seed)
    return scores, fuse_maps([near], torch.ones(1), (side, side), sigma).numpy()


def sigma_sweep(test: MTDImages, scores: np.ndarray, raw: np.ndarray) -> dict[str, dict[str, float]]:
    """Overall metrics of the unsmoothed maps ``raw`` smoothed at each sigma of :data:`SIGMAS`."""
    t = torch.from_numpy(raw)
    return {str(s): localisation_metrics(test.labels, scores, test.masks,
                                         gaussian_smooth(t, s).numpy(), test.pixel_valid)
            for s in SIGMAS}


def overlays_png(test: MTDImages, columns: dict[str, np.ndarray], seed: int) -> bytes:
    """One row per picked test tile (a normal + one defect per type): image, mask, heatmaps."""
    rng = np.random.default_rng(seed)
    picks = [int(rng.choice(np.flatnonzero(test.types == t))) for t in range(-1, len(MTD_TYPES))]
    ncol = 2 + len(columns)
    fig = Figure(figsize=(1.3 * ncol, 1.4 * len(picks)))
    for r, i in enumerate(picks):
        img = np.repeat(test.images[i][None], 3, axis=0)
        panels = [(img.transpose(1, 2, 0), "image"), (test.masks[i], "mask")]
        for name, maps in columns.items():
            lo, hi = np.quantile(maps, [0.01, 0.999])
            panels.append((overlay(img, maps[i], lo, hi), name))
        kind = "Free" if test.types[i] < 0 else MTD_TYPES[test.types[i]]
        for c, (pic, title) in enumerate(panels):
            ax = fig.add_subplot(len(picks), ncol, r * ncol + c + 1)
            ax.imshow(pic, cmap="gray", interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{kind}: {title}" if c == 0 else title, fontsize=6)
    fig.tight_layout(pad=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70)
    small = io.BytesIO()                      # a 64-colour palette keeps the committed file small
    Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(64).save(small, format="PNG",
                                                                          optimize=True)
    return small.getvalue()


def table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per setting, image AUROC / pixel AUROC / AUPRO per defect type."""
    cols = ["all", *MTD_TYPES]
    head = "| setting | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    body = ""
    for name, res in rows.items():
        cells = [" / ".join(f"{res[c][k]:.3f}" for k in ("image_auroc", "pixel_auroc", "aupro"))
                 if c in res else "-" for c in cols]
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/localisation", help="folder for the results")
    p.add_argument("--preset", default="mtd")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-fraction", type=float, default=0.7)
    p.add_argument("--labelled-per-type", type=int, default=5)
    p.add_argument("--sigma", type=float, default=4.0, help="heatmap smoothing (input pixels)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bank", type=int, default=20_000,
                   help="training vectors (or pixel cells) in the 1-NN baselines' heatmap bank")
    p.add_argument("--patch", type=int, default=8, help="side of the raw-pixel baseline's cells")
    p.add_argument("--no-cross-type", action="store_true", help="skip the cross-type protocol")
    p.add_argument("--calibration-fraction", type=float, default=0.0,
                   help="training tiles held out to standardise the maps pixel by pixel (extra rows)")
    p.add_argument("--save-model", default=None, metavar="FILE",
                   help="also save the fitted one-class detector (for probes of its maps)")
    p.add_argument("--model", default=None, metavar="FILE",
                   help="read the one-class detector from FILE (--save-model of the same --seed, "
                        "--preset and --set, but the position head's keys: a head of another "
                        "reader is then trained on it) instead of fitting it")
    p.add_argument("--head-masks", action="store_true",
                   help="the semi-supervised detectors retrain the position head with the "
                        "labelled defects' masks (needs --set scoring.heatmap_reader=head or tuned)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    overrides = dict(parse_override(o) for o in args.overrides)
    oc = AnoMem(args.preset, seed=args.seed, device="cpu", **overrides)
    data = read_mtd(side=resolve_config(args.preset, overrides).backbone.image_size)
    oc_split = split_mtd(data, args.train_fraction, args.seed)
    order = np.random.default_rng(args.seed).permutation(len(oc_split.train))
    n_held = round(args.calibration_fraction * len(order))
    held = oc_split.train.subset(order[:n_held])
    oc_split.train = oc_split.train.subset(np.sort(order[n_held:]))
    t0 = time.perf_counter()
    if args.model:
        oc = read_fitted(args.model, resolve_config(args.preset, {**overrides, "seed": args.seed,
                                                                  "device": "cpu"}),
                         oc_split.train.images)
    else:
        oc.fit(oc_split.train.images, progress=True, validation_fraction=0.0)
    stage1_s = time.perf_counter() - t0
    if args.save_model:
        oc.save(args.save_model)
    t0 = time.perf_counter()
    oc_scores, oc_raw = score_and_map(oc, data.images, 0.0)
    infer_ms = 1000 * (time.perf_counter() - t0) / len(data)
    oc_maps = gaussian_smooth(torch.from_numpy(oc_raw), args.sigma).numpy()
    by_name = {n: i for i, n in enumerate(data.names)}

    def oc_on(test: MTDImages) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.array([by_name[n] for n in test.names])
        return oc_scores[idx], oc_maps[idx], oc_raw[idx]

    results: dict[str, Any] = {}
    s, m, r = oc_on(oc_split.test)
    results["one-class"] = evaluate(oc_split.test, s, m)
    if n_held:
        x_held = to_image_tensor(held.images, oc.config_.backbone.image_size, "held-out tiles")
        results[STANDARDISED] = evaluate(oc_split.test, s, standardised(oc.network_, x_held, m, args.sigma))
    sweeps = {"one-class": sigma_sweep(oc_split.test, s, r)}
    refs = {"1-NN on the encoder": encoder_knn(oc, oc_split.train, oc_split.test, args.sigma,
                                               args.bank, args.seed),
            "1-NN on raw pixels": pixel_knn(oc_split.train, oc_split.test, args.sigma, args.bank,
                                            args.patch, args.seed)}
    for name, (sc, mp) in refs.items():
        results[name] = evaluate(oc_split.test, sc, mp)
    results[FUSED] = evaluate(oc_split.test, s, np.sqrt(np.maximum(m * refs["1-NN on raw pixels"][1], 0)))
    note = {"config": to_dict(oc.config_), "seed": args.seed}
    ss_split = split_mtd(data, args.train_fraction, args.seed, args.labelled_per_type)
    ss = with_heads(oc, ss_split.train, note, args.head_masks)
    ss_scores, ss_raw = score_and_map(ss, ss_split.test.images, 0.0)
    ss_maps = gaussian_smooth(torch.from_numpy(ss_raw), args.sigma).numpy()
    results["semi-supervised (heads)"] = evaluate(ss_split.test, ss_scores, ss_maps)
    if n_held:
        results[f"semi-supervised (heads), {STANDARDISED_WHAT}"] = evaluate(
            ss_split.test, ss_scores, standardised(ss.network_, x_held, ss_maps, args.sigma))
    s, m, _ = oc_on(ss_split.test)
    results["semi-supervised test, one-class model"] = evaluate(ss_split.test, s, m)
    sweeps["semi-supervised (heads)"] = sigma_sweep(ss_split.test, ss_scores, ss_raw)
    cross: dict[str, Any] = {}
    for held in () if args.no_cross_type else MTD_TYPES:
        split = split_mtd(data, args.train_fraction, args.seed, args.labelled_per_type, held)
        det = with_heads(oc, split.train, note, args.head_masks)
        sc, mp = score_and_map(det, split.test.images, args.sigma)
        s, m, _ = oc_on(split.test)
        cross[held] = {"heads": evaluate(split.test, sc, mp, overall=False)[held],
                       "one-class model": evaluate(split.test, s, m, overall=False)[held],
                       "n_labelled_train": int(split.train.labels.sum())}
    for row, part in (("cross-type (heads, held-out type only)", "heads"),
                      ("cross-type test, one-class model", "one-class model")):
        if cross:
            results[row] = {t: c[part] for t, c in cross.items()}
            results[row]["all"] = {k: float(np.mean([c[part][k] for c in cross.values()]))
                                   for k in cross["Crack"][part]}
    out = Path(args.out)
    record = {
        "command": "python benchmarks/localisation/run_mtd.py " + " ".join(sys.argv[1:] if argv is None
                                                                             else argv),
        "anomem_version": __version__, "seed": args.seed, "train_fraction": args.train_fraction,
        "labelled_per_type": args.labelled_per_type, "sigma": args.sigma, "bank": args.bank,
        "calibration_fraction": args.calibration_fraction, "n_calibration": n_held,
        "patch": args.patch,
        "config": to_dict(oc.config_), "threads": args.threads,
        "machine": f"2-core CPU shared with other jobs, no GPU ({platform.processor() or 'cpu'}, "
                   f"torch {torch.__version__})",
        "n": {"train_normal": len(oc_split.train), "test_normal": int((oc_split.test.types < 0).sum()),
              "test_defect": int(oc_split.test.labels.sum()),
              "test_defect_without_pixel_truth": int((~oc_split.test.pixel_valid).sum())},
        "seconds": {"stage1": stage1_s, "total": time.perf_counter() - t_start},
        "inference_ms_per_image": infer_ms, "results": results, "sigma_sweep": sweeps,
        "cross_type": cross}
    atomic_write_text(out / "results.json", json.dumps(record, indent=1) + "\n")
    md = ("Image AUROC / pixel AUROC / AUPRO (FPR <= 0.3), heatmap sigma = "
          f"{args.sigma} px.\n\n" + table(results) + "\nSmoothing sweep (overall):\n\n"
          + "| setting | sigma | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|\n"
          + "".join(f"| {k} | {sg} | {v['image_auroc']:.3f} | {v['pixel_auroc']:.3f} | "
                    f"{v['aupro']:.3f} |\n" for k, sw in sweeps.items() for sg, v in sw.items()))
    atomic_write_text(out / "results.md", md)
    ss_idx = {n: i for i, n in enumerate(ss_split.test.names)}
    vis = oc_split.test.subset(np.array([i for i, n in enumerate(oc_split.test.names) if n in ss_idx]))
    oc_vis = oc_on(vis)[1]
    ss_vis = ss_maps[np.array([ss_idx[n] for n in vis.names])]
    atomic_write_bytes(out / "overlays.png", overlays_png(
        vis, {"one-class": oc_vis, "semi-sup.": ss_vis}, args.seed))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validate the heatmap's keys (``scoring.heatmap_scales``, ``scoring.heatmap_margin``) on
synthetic defects in held-out training normals.

The heatmap choice needs pixel truth, and the one image set with it (Magnetic
Tile Defects) has it only on its test split.  Here the truth is made from the
training split alone: 20 % of the training normals (seeded) are held out, the
detector is fitted on the rest with the defaults (``pseudo_anomalies=rotation``,
which never pastes a local defect, so the validation defects are new to it; the
``mtd`` preset pastes local defects since commit 9cfe75d, so read its fits with
``--defects stain blob``, and ``--set stage1.epochs=12 --set
extensions.pseudo_anomalies=rotation --set extensions.position_hinge=0`` reproduces
the tile rows written before),
and every held-out normal gets a defective copy: a :func:`anomem.augment.defect_masks`
shape filled with another held-out image, shifted and rescaled in brightness
(:func:`anomem.augment.local_pseudo_anomalies`, seed stream of the row's seed).
Pixel AUROC and AUPRO (up to 30 % FPR) are read over the held-out normals and
their copies, with the same fit's maps under each reading of :data:`READINGS`
(the keys only change how maps are read; columns ``<reading>_pixel_auroc``,
``<reading>_aupro``).  A pasted patch of the same material is a harder
and different defect than a real one; the rows rank the two readings, they
do not predict a test score.

    python -m experiments.validation.heatmaps --dataset mtd --seed 0 >> experiments/validation/heatmaps.jsonl
    python -m experiments.validation.heatmaps --dataset cifar --seed 0 --classes 0 1 >> ...
    python -m experiments.validation.heatmaps --dataset mtd --seed 0 --set "memory.stages=[1,2,3]" ...

The rows of ``heatmap_readings.jsonl`` were written at commit c7f781b, whose
``finest_image`` and ``all_image`` readings added the image-level scales to the
map (``scoring.heatmap_scales=finest+image`` and ``all+image``, one constant per
image); they lost on both image sets and the package no longer has them.

``--defect-scale 2`` doubles the defects' size bounds (column ``defect_scale``):
defects that cover a large part of the image, where the default's are local.

``--position-calibration`` standardises the maps pixel by pixel
(``scoring.heatmap_calibration=position``) with half of the held-out normals, and scores
the other half and its copies (columns ``<reading>_pz``; ``<reading>_pc``: centred only).

``--set KEY=VALUE`` (repeatable) fits with those overrides (column ``set_keys``); with
``--set scoring.heatmap_reader=head`` (or ``tuned``) the fit trains a position head
(:mod:`anomem.stages.position_head`) and the rows add its map (``head_*``) beside the
memory's readings of the same fit.
``--defects stain`` gives the held-out normals stains (:func:`stained`) instead
of pasted material, for a fit that trains on pasted defects
(``pseudo_anomalies=local``), which the default defects would favour (column
``defects``).  Their shapes are still those the fit pastes; ``--defects blob`` stains
irregular blobs of thresholded smooth noise (:func:`noise_masks`) instead, a shape no fit
trains on (for the position head, which learns from pasted shapes).

``mtd``: the ``mtd`` preset on the split of :func:`anomem.data.mtd.split_mtd`
(seed 0), its 666 training tiles carved; ``cifar``: the ``cpu`` preset at the
grid budget (3 stage-1 epochs, 1,000 training images of the class, carved); ``cifar128``: the
first 300 training images of the class at the ``mtd`` preset and its budget (upsampled to
128 px): photographs through the large-image preset, whose maps are 16 x 16 where the
``cpu`` preset's are 8 x 8 or coarser.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from anomem import AnoMem
from anomem.augment import defect_masks, local_pseudo_anomalies
from anomem.config import parse_override
from anomem.data.convert import to_image_tensor
from anomem.heatmaps import fit_map_calibration, model_side_maps
from anomem.localisation import standardise_pixels
from anomem.reports.pixel_metrics import aupro, pixel_auroc

#: The heatmap readings compared on one fit: name -> the keys it sets, and ``sigma_per_side``,
#: the smoothing as a fraction of the side (absent: the default, 1/32; ``finest_s0``: none).
MEMORY = {"scoring.heatmap_reader": "memory"}
READINGS = {"all": {**MEMORY, "scoring.heatmap_scales": "all", "scoring.heatmap_margin": 0.0},
            "finest": {**MEMORY, "scoring.heatmap_scales": "finest", "scoring.heatmap_margin": 0.0},
            "finest_m25": {**MEMORY, "scoring.heatmap_scales": "finest", "scoring.heatmap_margin": 0.25},
            "finest_m50": {**MEMORY, "scoring.heatmap_scales": "finest", "scoring.heatmap_margin": 0.5},
            **{f"finest_s{k}": {**MEMORY, "scoring.heatmap_scales": "finest",
                                "scoring.heatmap_margin": 0.0,
                                "sigma_per_side": 1 / k if k else 0.0} for k in (0, 64, 16, 8)}}
#: Read only from a fit with ``--set scoring.heatmap_reader=head`` (or ``tuned``): the position
#: head's map, read with the fit's own reader.
HEAD_READINGS = {"head": {"scoring.heatmap_margin": 0.0}}


def split_reading(reading: dict, side: int) -> tuple[dict, float | None]:
    """A reading's configuration keys, and its smoothing in pixels at ``side`` (None: the
    default, :func:`anomem.heatmaps.default_sigma`) from its ``sigma_per_side``."""
    keys = {k: v for k, v in reading.items() if k != "sigma_per_side"}
    frac = reading.get("sigma_per_side")
    return keys, None if frac is None else frac * side


def normals_of(dataset: str, c: int) -> tuple[np.ndarray, str, dict]:
    """The training normals of one task, its preset and budget overrides."""
    if dataset == "mtd":
        from anomem.data.mtd import read_mtd, split_mtd
        return split_mtd(read_mtd(side=128), seed=0).train.images, "mtd", {}
    from anomem.protocols.runner import load_dataset
    _, split = load_dataset("cifar10_jpeg")
    if dataset == "cifar128":
        return split.x_train[split.y_train == c][:300], "mtd", {}
    return split.x_train[split.y_train == c][:1000], "cpu", {"stage1_epochs": 3}


def noise_masks(count: int, side: int, g: torch.Generator) -> torch.Tensor:
    """``count`` irregular blobs (count, side, side) bool, unlike :func:`anomem.augment.defect_masks`'
    capsules: gaussian noise on a 6 x 6 grid (the same share of the image at any side),
    upsampled bilinearly and cut at the quantile that leaves a share uniform in [2 %, 12 %] of the pixels (the
    thresholded smooth noise of DRAEM's masks, without its Perlin octaves)."""
    noise = torch.randn(count, 1, 6, 6, generator=g)
    smooth = torch.nn.functional.interpolate(noise, size=(side, side), mode="bilinear",
                                             align_corners=False).flatten(1)
    share = 0.02 + 0.10 * torch.rand(count, 1, generator=g)
    cut = torch.stack([torch.quantile(row, 1 - q) for row, q in zip(smooth, share[:, 0])])
    return (smooth >= cut[:, None]).view(count, side, side)


def stained(v: torch.Tensor, g: torch.Generator, scale: float = 1.0,
            shapes: str = "capsule") -> tuple[torch.Tensor, torch.Tensor]:
    """``v`` (n, 3, S, S) in [0, 1] then a stained copy of each, and pixel labels (2n, S, S), 1 = normal.

    A stain is the image's own content under a :func:`anomem.augment.defect_masks`
    shape, blurred (a 5 x 5 binomial kernel) and scaled in brightness by a
    factor uniform in [0.6, 0.8] or [1.25, 1.5] (clamped to [0, 1]): the shapes
    of ``pseudo_anomalies=local``, but no pasted material and no shift, so not
    the defect it shows stage 1.  ``shapes="noise"``: a :func:`noise_masks` blob instead,
    a shape no fit pastes.
    """
    n, side = len(v), v.shape[-1]
    masks = noise_masks(n, side, g) if shapes == "noise" else defect_masks(n, side, g, scale)
    masks = masks.unsqueeze(1)
    darker = torch.rand(n, 1, 1, 1, generator=g) < 0.5
    gain = torch.where(darker, 0.6 + 0.2 * torch.rand(n, 1, 1, 1, generator=g),
                       1.25 + 0.25 * torch.rand(n, 1, 1, 1, generator=g))
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :] / 256).expand(3, 1, 5, 5)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(v, (2, 2, 2, 2), mode="replicate"),
                                         k, groups=3)
    copies = torch.where(masks, (blurred * gain).clamp(0, 1), v)
    labels = torch.cat([torch.ones(n, side, side), (~masks[:, 0]).float()])
    return torch.cat([v, copies]), labels


def defective_copies(x: torch.Tensor, seed: int, family: str = "paste",
                     scale: float = 1.0) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 images (2n, 3, S, S): ``x`` then a defective copy of each; masks (2n, S, S), 1 = defect.

    ``family``: ``paste``, the defects of :func:`anomem.augment.local_pseudo_anomalies`
    (what ``pseudo_anomalies=local`` trains on); ``stain``, :func:`stained`; ``blob``, a
    stain of a :func:`noise_masks` shape.  ``scale``: the masks' (:func:`anomem.augment.defect_masks`).
    """
    v = x.float() / 255
    g = torch.Generator().manual_seed(seed)
    if family in ("stain", "blob"):
        both, y = stained(v, g, scale, "noise" if family == "blob" else "capsule")
    else:
        both, _, y, _ = local_pseudo_anomalies(v, v, torch.ones(len(v)), 1.0, g, mask_scale=scale)
    images = (both * 255).round().clamp(0, 255).to(torch.uint8)
    return images, (y == 0).numpy()


def fitted(dataset: str, c: int, seed: int, overrides: dict | None = None) -> tuple[AnoMem, torch.Tensor]:
    """The detector fitted on 80 % of the training normals (seeded), and the held-out 20 % as
    uint8 images (n, 3, S, S) at the network's input size."""
    normals, preset, budget = normals_of(dataset, c)
    budget = {**budget, **(overrides or {})}
    rng = np.random.default_rng(seed)
    held = rng.permutation(len(normals))[:round(0.2 * len(normals))]
    train = np.setdiff1d(np.arange(len(normals)), held)
    det = AnoMem(preset, seed=seed, **budget).fit(normals[train], validation_fraction=0.0,
                                                  progress=False)
    return det, to_image_tensor(normals[held], det.network_.config.backbone.image_size, "normals")


def rows_of(det: AnoMem, x: torch.Tensor, seed: int, family: str = "paste", scale: float = 1.0,
            position_calibration: bool = False) -> dict:
    """Pixel AUROC and AUPRO (%) of every reading of :data:`READINGS` (and :data:`HEAD_READINGS`
    for a fit with a position head) on the held-out normals ``x`` and their defective copies."""
    net = det.network_
    config = net.config
    calib = x[:len(x) // 2] if position_calibration else x[:0]
    images, masks = defective_copies(x[len(calib):], seed, family, scale)
    out = {}
    reader = {"scoring.heatmap_reader": config.scoring.heatmap_reader}
    readings = {**READINGS, **({k: {**reader, **r} for k, r in HEAD_READINGS.items()}
                               if net.position_head is not None else {})}
    for name, reading in readings.items():
        keys, sigma = split_reading(reading, images.shape[-1])
        net.config = config.replace(**keys)
        maps = model_side_maps(net, images, sigma)
        out[f"{name}_pixel_auroc"] = round(100 * pixel_auroc(masks, maps), 2)
        out[f"{name}_aupro"] = round(100 * aupro(masks, maps), 2)
        if len(calib):   # the statistics at the reading's own smoothing
            fit_map_calibration(net, calib, sigma)
            z = standardise_pixels(torch.from_numpy(maps), net.map_loc, net.map_scale).numpy()
            for tag, read in (("pz", z), ("pc", maps - net.map_loc.numpy())):
                out[f"{name}_{tag}_pixel_auroc"] = round(100 * pixel_auroc(masks, read), 2)
                out[f"{name}_{tag}_aupro"] = round(100 * aupro(masks, read), 2)
    net.config = config
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("mtd", "cifar", "cifar128"), default="mtd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, nargs="+", default=[0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--defects", choices=("paste", "stain", "blob"), nargs="+", default=["paste"],
                   help="the validation defects: pasted material (stage 1's `local`), stains, or "
                        "stains of irregular noise shapes that no fit pastes; several: one row "
                        "each, read from the same fit")
    p.add_argument("--defect-scale", type=float, default=1.0,
                   help="the defects' size bounds times this (2: defects over a large part of the image)")
    p.add_argument("--position-calibration", action="store_true",
                   help="half of the held-out normals standardise the maps pixel by pixel (readings "
                        "<name>_pz; <name>_pc: centred only); the other half and its copies are scored")
    args = p.parse_args(argv)
    overrides = dict(parse_override(o) for o in args.set)
    torch.set_num_threads(1)
    for c in ([0] if args.dataset == "mtd" else args.classes):
        t0 = time.time()
        det, held = fitted(args.dataset, c, args.seed, overrides)
        for family in args.defects:
            row = rows_of(det, held, args.seed, family, args.defect_scale, args.position_calibration)
            print(json.dumps({"ds": args.dataset, "split": "validation", "seed": args.seed, "c": c,
                              **({"defects": family} if family != "paste" else {}),
                              **({"defect_scale": args.defect_scale} if args.defect_scale != 1 else {}),
                              **({"calibration": "position"} if args.position_calibration else {}),
                              **row, **({"set_keys": overrides} if overrides else {}),
                              "t": round(time.time() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""'anomem fit': train a detector on normal images (plus, optionally, labelled anomalies).

NORMAL is a folder, whose PNG, JPEG, BMP and TIFF files at any depth are
normal images, or a list file: '.txt' with one image path per line, or
'.csv' with a 'path' column, an optional 'label' column (0 or normal, 1 or
anomaly; a labelled anomaly trains the semi-supervised detector) and an
optional 'type' column (anomaly type); relative paths are read from the list
file's folder.  Grayscale, RGB and RGBA images of any size are converted to
RGB and resized to the configuration's 'backbone.image_size'.  With '--anomalies SRC'
(a folder, one sub-folder per anomaly type, or a list) the detector becomes
semi-supervised (paper Eq. 10-12); without anomalies, one-class (Eq. 9).  An
image given both as normal and as anomaly (same file or same bytes) is an
error.  '--masks DIR' gives the anomalies' defect masks (DIR/<type>/<name>.png or
<name>_mask.png, as MVTec AD's ground_truth folders) to the position head of
'--set scoring.heatmap_reader=head', which then learns the heatmap from them too.

The configuration is a preset or a YAML file (which may start from a preset
with 'preset: cpu'), changed with '--set section.key=value' (e.g.
'--set stage1.epochs=30'; the flat names of earlier versions, such as
'stage1_epochs', are read too).  The default preset
'auto' picks digits, cpu or mtd from the images' size (the median over files
of the larger side; <= 24 px, <= 64 px, larger); see 'presets' below.

Threshold: '--validation-fraction' (default 0.2, as AnoMem.fit) of the normal
images is held out of training; the threshold is the order statistic of
their scores whose expected false-alarm rate on new normal images is at most
'scoring.target_frr' (--set scoring.target_frr=0.01 for 1%), and the output
gives a 95% upper bound on that rate.  Fewer than 1/target_frr - 1 held-out normals
(19 for 5%) cannot hold the target: a warning says so.  '--threshold' sets
the threshold explicitly instead.  Both are stored in the model file.

Networks: on a small training set of normal images only (at most 500) 'fit'
trains an ensemble of five networks on the same images, each with its own
seed, and writes one ensemble file (anomem.ensemble.AnoMemEnsemble): five
times the time of one fit, scores that a refit reproduces more closely.  On
larger sets, and with labelled anomalies, it trains one network.  '--members
K' asks for K networks whatever the set ('--members 1': one network).

Progress bars (loss, images/s, ETA) are shown on a terminal and hidden when
the output is redirected ('-q' hides them always); one CSV row per
optimisation step goes to '--log'.  With '--checkpoint-dir' both stages save
checkpoints there; rerunning the same command resumes where it stopped.

examples:
  anomem fit good_parts/ -o parts.anomem
  anomem fit good_parts/ --anomalies defects/ --config cpu --set stage1.epochs=30
  anomem fit good_parts/ --members 1 -o parts.anomem
  anomem fit good/ --anomalies defects/ --masks ground_truth/ --set scoring.heatmap_reader=head
  anomem fit images.csv --config my.yaml --set scoring.target_frr=0.01 --checkpoint-dir ckpt/
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem.cli.paths import check_image_sources
from anomem.config import AnoMemConfig, get_config, parse_override
from anomem.data.folders import format_skipped
from anomem.data.masks import read_masks
from anomem.data.sources import Entry, by_label, check_disjoint, expand_source, load_entries
from anomem.detector import AnoMem, holdout_count
from anomem.ensemble import AnoMemEnsemble, make_detector, parse_members
from anomem.errors import InvalidInputError
from anomem.presets import AUTO, PRESET_GUIDE, auto_preset, files_side
from anomem.progress import auto_progress
from anomem.reports.report import csv_text
from anomem.serialization import atomic_write_text
from anomem.threshold import ThresholdWarning, describe

LOG_FIRST = ("stage", "step", "epoch", "lr", "loss", "images_per_s")


class CsvLog:
    """Training log: one row per step, rewritten atomically every 'every' rows and at the end.

    Columns are the union of the keys seen (stage 2 rows have fewer), first
    :data:`LOG_FIRST`, then the others sorted.
    """

    def __init__(self, path: Path, every: int = 50) -> None:
        self.path, self.every, self.rows = path, every, []

    def __call__(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) % self.every == 0:
            self.flush()

    def flush(self) -> None:
        keys = {k for r in self.rows for k in r}
        header = [k for k in LOG_FIRST if k in keys] + sorted(keys - set(LOG_FIRST))
        atomic_write_text(self.path, csv_text(header, [[r.get(k, "") for k in header]
                                                       for r in self.rows]))


def presets_help() -> str:
    """The 'presets:' section of the help: every preset and what it is for."""
    width = max(map(len, PRESET_GUIDE))
    return "presets:\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in PRESET_GUIDE.items())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train a detector on a folder or list of normal images",
                       description=f"{__doc__}\n{presets_help()}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("normal", metavar="NORMAL",
                   help="folder of normal images (searched at any depth), or a .csv/.txt list of "
                        "image paths (a .csv 'label' column may mark anomalies)")
    p.add_argument("--anomalies", metavar="SRC",
                   help="folder of labelled anomalies, one sub-folder per anomaly type, or a list "
                        "file (optional)")
    p.add_argument("--masks", metavar="DIR",
                   help="folder of the anomalies' defect masks (DIR/<type>/<name>[_mask].<ext>), "
                        "for the position head (--set scoring.heatmap_reader=head or tuned)")
    p.add_argument("-o", "--output", default="model.anomem", metavar="MODEL",
                   help="model file to write (default: model.anomem)")
    p.add_argument("--config", default=AUTO, metavar="PRESET|YAML",
                   help=f"preset ({', '.join(PRESET_GUIDE)}; see 'presets' above) or YAML config "
                        f"file (default: auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, repeatable, e.g. --set stage1.epochs=30")
    p.add_argument("--validation-fraction", type=float, default=0.2, metavar="F",
                   help="share of normal images held out to set the threshold (default: 0.2, as "
                        "AnoMem.fit; 0 uses the training normals, without a bound)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="explicit decision threshold (score > T is an anomaly) instead of target_frr")
    p.add_argument("--members", default="auto", metavar="K|auto",
                   help="networks to fit: K, or 'auto' (the default): an ensemble of 5 on at most "
                        "500 normal images without labelled anomalies, else 1")
    p.add_argument("--log", metavar="CSV", help="training log (default: MODEL with .log.csv appended)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="save checkpoints here and resume from them")
    p.add_argument("--bad-images", choices=("fail", "skip"), default="fail",
                   help="unreadable or truncated image files: stop with an error (default) or skip "
                        "them with a listed warning")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (by default they are shown only on a terminal)")


def labelled_entries(normal: str, anomalies: str | None) -> tuple[list[Entry], list[Entry]]:
    """Normal and anomalous images of the two sources, refusing an image in both."""
    groups = [(expand_source(normal, "normal"), 0)]
    if anomalies:
        groups.append((expand_source(anomalies, "anomalies"), 1))
    normal_e, anom_e = by_label(groups)
    check_disjoint(normal_e, anom_e)
    return normal_e, anom_e


def resolve_config(name: str, overrides: list[str], entries: list[Entry]) -> tuple[AnoMemConfig, str]:
    """The configuration, and how it was chosen (``auto`` reads the image files' sizes)."""
    sets = dict(parse_override(o) for o in overrides)
    if name != AUTO:
        return get_config(name, sets), name
    side = files_side(e.path for e in entries)
    chosen = auto_preset(side)
    return get_config(chosen, sets), f"auto -> {chosen} (images {side} px)"


def fit_masks(masks_dir: str | None, normal_e: list[Entry], anom_e: list[Entry],
              side: int) -> list[np.ndarray | None] | None:
    """``--masks``: one entry per image of the fit (normal images first, none for them), or
    None without the option (:func:`anomem.data.masks.read_masks`)."""
    if masks_dir is None:
        return None
    if not anom_e:
        raise InvalidInputError("--masks gives the masks of labelled anomalies; add --anomalies SRC")
    return [None] * len(normal_e) + read_masks(masks_dir, anom_e, side)


def threshold_origin(det: AnoMem, explicit: float | None) -> str:
    if explicit is not None:
        return "set explicitly with --threshold"
    if det.threshold_normals_:
        return describe(det.threshold_normals_, det.config_.scoring.target_frr)
    return (f"flags {100 * det.config_.scoring.target_frr:g}% of the training normal images; no bound on new "
            f"images: hold out normals with --validation-fraction")


def run(args: argparse.Namespace) -> int:
    check_image_sources([("NORMAL", args.normal), ("--anomalies", args.anomalies)],
                        "fit trains a new model from images: anomem fit NORMAL [--anomalies SRC] "
                        "-o MODEL (score or evaluate take a fitted MODEL)")
    members = parse_members(args.members)
    progress = not args.quiet and auto_progress()
    normal_e, anom_e = labelled_entries(args.normal, args.anomalies)
    cfg, preset = resolve_config(args.config, args.overrides, normal_e + anom_e)
    side = cfg.backbone.image_size
    normal, normal_e = load_entries(normal_e, side, args.bad_images, progress, "normal images")
    images, labels, skipped = normal.images, torch.zeros(len(normal.images)), list(normal.skipped)
    types: dict[str, int] = {}
    if anom_e:
        anom, anom_e = load_entries(anom_e, cfg.backbone.image_size, args.bad_images, progress, "anomalies")
        images, labels = torch.cat([images, anom.images]), torch.cat([labels, torch.ones(len(anom.images))])
        skipped += anom.skipped
        for e in anom_e:
            types[e.group] = types.get(e.group, 0) + 1
    masks = fit_masks(args.masks, normal_e, anom_e, side)
    n, held = len(normal_e), holdout_count(len(normal_e), args.validation_fraction)
    kinds = ", ".join(f"{t}: {k}" for t, k in sorted(types.items())) or "none (one-class)"
    if masks is not None:
        kinds += f"; masks for {sum(m is not None for m in masks)}"
    print(f"anomem fit: {n} normal images: {n - held} train, {held} held out for the threshold; "
          f"anomalies {kinds}; preset {preset}: {cfg.backbone.arch} width {cfg.backbone.width} at "
          f"{cfg.backbone.image_size}x{cfg.backbone.image_size} px", file=sys.stderr)
    if skipped:
        print(f"anomem fit: warning: {format_skipped(skipped)}", file=sys.stderr)
    out = Path(args.output)
    log = CsvLog(Path(args.log) if args.log else out.with_name(out.name + ".log.csv"))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = make_detector(cfg, members, len(images), semi_supervised=bool(anom_e))
        if masks is not None and isinstance(det, AnoMemEnsemble):
            raise InvalidInputError("--masks trains one network's position head; add --members 1")
        det = det.fit(images, labels.numpy().astype(int),
                      validation_fraction=args.validation_fraction,
                      checkpoint_dir=args.checkpoint_dir, progress=progress, log=log,
                      **({} if masks is None else {"masks": masks}))
    log.flush()
    for w in caught:
        if args.threshold is None or not issubclass(w.category, ThresholdWarning):
            print(f"anomem fit: warning: {w.message}", file=sys.stderr)
    if args.threshold is not None:
        det.threshold_, det.threshold_frr_bound_, det.threshold_normals_ = float(args.threshold), None, 0
    det.save(out)
    mode = "semi-supervised" if det.semi_supervised else "one-class"
    networks = (f"an ensemble of {len(det.members_)} networks" if isinstance(det, AnoMemEnsemble)
                else "one network")
    print(f"anomem fit: {mode} model ({networks}) written to {out} in {time.perf_counter() - t0:.0f} s; "
          f"threshold {det.threshold_:.6g} ({threshold_origin(det, args.threshold)}); "
          f"pixel threshold {det.pixel_threshold_:.6g}; log {log.path}", file=sys.stderr)
    return 0

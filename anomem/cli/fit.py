"""'anomem fit': train a detector on a folder of normal images (plus, optionally, anomalies).

Every PNG, JPEG, BMP or TIFF file under NORMAL_DIR (at any depth) is a normal
image; grayscale, RGB and RGBA images of any size are converted to RGB and
resized to the configuration's 'image_size'.  With '--anomalies DIR' the
images under DIR are labelled anomalies (one sub-folder per anomaly type) and
the detector becomes semi-supervised (paper Eq. 10-12); without it, one-class
(Eq. 9).

The configuration is a preset (paper, cpu, digits) or a YAML file (which may
start from a preset with 'preset: cpu'), changed with '--set key=value'.

Threshold: by default '--validation-fraction' of the normal images is held
out of training and the threshold is the score that flags 'target_frr' of
them (e.g. --set target_frr=0.01 for 1% false rejections); '--threshold'
sets it explicitly instead.  Both are stored in the model file.

Training shows progress bars (loss, images/s, ETA) and writes one CSV row per
optimisation step ('--log').  With '--checkpoint-dir' both stages save
checkpoints there; rerunning the same command resumes where it stopped.

examples:
  anomem fit good_parts/ -o parts.anomem
  anomem fit good_parts/ --anomalies defects/ --config cpu --set stage1_epochs=30
  anomem fit good_parts/ --config my.yaml --set target_frr=0.01 --checkpoint-dir ckpt/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from anomem.config import PRESETS, get_config, parse_override
from anomem.data.folders import find_images, format_skipped, group_name, load_images
from anomem.detector import AnoMem
from anomem.reports.report import csv_text
from anomem.serialization import atomic_write_text

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train a detector on a folder of normal images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("normal", metavar="NORMAL_DIR", help="folder of normal images (searched at any depth)")
    p.add_argument("--anomalies", metavar="DIR",
                   help="folder of labelled anomalies, one sub-folder per anomaly type (optional)")
    p.add_argument("-o", "--output", default="model.anomem", metavar="MODEL",
                   help="model file to write (default: model.anomem)")
    p.add_argument("--config", default="cpu", metavar="PRESET|YAML",
                   help=f"preset ({', '.join(PRESETS)}) or YAML config file (default: cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, repeatable, e.g. --set stage1_epochs=30")
    p.add_argument("--validation-fraction", type=float, default=0.2, metavar="F",
                   help="share of normal images held out to set the threshold (default: 0.2; "
                        "0 uses the training normals)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="explicit decision threshold (score > T is an anomaly) instead of target_frr")
    p.add_argument("--log", metavar="CSV", help="training log (default: MODEL with .log.csv appended)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="save checkpoints here and resume from them")
    p.add_argument("--bad-images", choices=("fail", "skip"), default="fail",
                   help="unreadable or truncated image files: stop with an error (default) or skip "
                        "them with a listed warning")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = get_config(args.config, dict(parse_override(o) for o in args.overrides))
    progress = not args.quiet
    normal = load_images(find_images(args.normal, "normal"), cfg.image_size, args.bad_images,
                         progress, "normal images")
    images, labels, skipped = normal.images, torch.zeros(len(normal.images)), list(normal.skipped)
    types: dict[str, int] = {}
    if args.anomalies:
        anom = load_images(find_images(args.anomalies, "anomalies"), cfg.image_size, args.bad_images,
                           progress, "anomalies")
        images, labels = torch.cat([images, anom.images]), torch.cat([labels, torch.ones(len(anom.images))])
        skipped += anom.skipped
        for p in anom.paths:
            t = group_name(args.anomalies, p)
            types[t] = types.get(t, 0) + 1
    if skipped:
        print(f"anomem fit: warning: {format_skipped(skipped)}", file=sys.stderr)
    out = Path(args.output)
    log = CsvLog(Path(args.log) if args.log else out.with_name(out.name + ".log.csv"))
    kinds = ", ".join(f"{t}: {n}" for t, n in sorted(types.items())) or "none (one-class)"
    print(f"anomem fit: {len(normal.paths)} normal images, anomalies {kinds}; "
          f"arch {cfg.arch} width {cfg.width} at {cfg.image_size}x{cfg.image_size} px", file=sys.stderr)
    t0 = time.perf_counter()
    det = AnoMem(cfg).fit(images, labels.numpy().astype(int), validation_fraction=args.validation_fraction,
                          checkpoint_dir=args.checkpoint_dir, progress=progress, log=log)
    log.flush()
    if args.threshold is not None:
        det.threshold_ = float(args.threshold)
        origin = "set explicitly with --threshold"
    else:
        held = int(int((labels == 0).sum()) * args.validation_fraction)
        origin = (f"flags {100 * cfg.target_frr:g}% of " +
                  (f"{held} held-out normal images" if held else "the training normal images"))
    det.save(out)
    mode = "semi-supervised" if det.semi_supervised else "one-class"
    print(f"anomem fit: {mode} model written to {out} in {time.perf_counter() - t0:.0f} s; "
          f"threshold {det.threshold_:.6g} ({origin}); log {log.path}", file=sys.stderr)
    return 0

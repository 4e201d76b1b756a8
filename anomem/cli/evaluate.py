"""'anomem evaluate': detection metrics and a report on labelled images.

Scores every image under '--normal' (truth: normal) and '--anomalies'
(truth: anomaly; each sub-folder is an anomaly type) and prints:

  AUROC          probability that an anomaly scores above a normal image
  AUPR           area under precision-recall (average precision), anomalies positive
  FPR at 95% TPR share of normal images flagged when 95% of anomalies are found
  F1             of the decisions score > threshold (the model's, or --threshold)

plus the AUROC and detection rate of each anomaly type.  Each source is a
folder or a list file ('.txt': one path per line; '.csv': a 'path' column,
optional 'label' (0/normal, 1/anomaly) and 'type' columns).  A '.csv' whose
every row has a label may be given alone, as LIST.  An image that is both
normal and an anomaly (same file or same bytes) is an error.

Beside the model's AUROC stands a reference that needs no training: each
image's distance to its nearest normal image on 16x16 pixels, among the
normal images evaluated here (each leaving itself out;
anomem.baselines.PixelKNN).  A model below it has learnt nothing a pixel
comparison does not see, and one below 0.5 ranks anomalies under normal
images; both are said plainly.

The report folder gets 'report.html' (or 'report.md') with 'roc.png',
'histogram.png' (normal vs anomaly scores and the threshold) and
'top_anomalies.png' (the highest-scoring images with heatmaps),
'metrics.json' and 'scores.csv'.

examples:
  anomem evaluate parts.anomem --normal test/good --anomalies test/defects
  anomem evaluate parts.anomem --normal good/ --anomalies bad/ --report out/ --format md
  anomem evaluate parts.anomem test.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from anomem.baselines.pixel_knn import leave_one_out_scores
from anomem.cli.paths import check_image_sources, check_model_argument
from anomem.cli.score import model_threshold
from anomem.data.folders import format_skipped
from anomem.data.sources import Entry, by_label, check_disjoint, expand_source, load_entries
from anomem.detector import AnoMem
from anomem.ensemble import AnoMemEnsemble, load_detector
from anomem.errors import InvalidInputError
from anomem.progress import auto_progress
from anomem.reports.metrics import auroc, detection_metrics
from anomem.reports.report import csv_text, write_report
from anomem.serialization import atomic_write_text
from anomem.threshold import describe

REFERENCE = "PixelKNN, the nearest normal image on 16x16 pixels, no training"
REFERENCE_SIZE = 16


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="AUROC, AUPR, FPR@95%%TPR, F1 and a report on labelled images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model file written by 'anomem fit'")
    p.add_argument("list", metavar="LIST", nargs="?",
                   help="a .csv list with 'path' and 'label' columns (instead of or besides "
                        "--normal / --anomalies)")
    p.add_argument("--normal", metavar="SRC", help="folder or list of normal test images")
    p.add_argument("--anomalies", metavar="SRC",
                   help="folder of anomalous test images, one sub-folder per anomaly type, or a list")
    p.add_argument("--report", default="report", metavar="DIR", help="report folder (default: report)")
    p.add_argument("--format", choices=("html", "md"), default="html",
                   help="report format: html or md (Markdown) (default: html)")
    p.add_argument("--threshold", type=float, metavar="T", help="threshold to use instead of the model's")
    p.add_argument("--top", type=int, default=8, metavar="K",
                   help="most anomalous images shown with heatmaps (default: 8)")
    p.add_argument("--bad-images", choices=("fail", "skip"), default="fail",
                   help="unreadable or truncated image files: stop with an error (default) or skip "
                        "them with a listed warning")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (by default they are shown only on a terminal)")


def labelled_sources(args: argparse.Namespace) -> tuple[list[Entry], list[Entry]]:
    """(normal, anomalies) from LIST, --normal and --anomalies; both needed, none shared."""
    groups = []
    if args.list:
        entries = expand_source(args.list, "labelled list")
        unlabelled = [e for e in entries if e.label is None]
        if unlabelled:
            raise InvalidInputError(f"{len(unlabelled)} image(s) of {args.list!r} have no label (e.g. "
                                    f"{str(unlabelled[0].path)!r}); give every row a label (0/normal, "
                                    f"1/anomaly) or pass the list as --normal or --anomalies")
        groups.append((entries, 0))
    for source, role, what in ((args.normal, 0, "normal"), (args.anomalies, 1, "anomalies")):
        if source:
            groups.append((expand_source(source, what), role))
    normal, anomalies = by_label(groups)
    if not normal or not anomalies:
        raise InvalidInputError(f"evaluate needs normal images and anomalies, got {len(normal)} and "
                                f"{len(anomalies)}; pass --normal SRC --anomalies SRC or a LIST "
                                f"with both labels")
    check_disjoint(normal, anomalies)
    return normal, anomalies


def verdict(model: float, reference: float,
            per_type: list[tuple[str, int, float, float]] = ()) -> list[str]:
    """Plain warnings when the model is no better than the reference or than chance, when an
    anomaly type (``per_type`` rows of :func:`_per_type`) or the reference is below chance."""
    notes = []
    if model < 0.5:
        notes.append(f"the model's AUROC {model:.4f} is below 0.5: it scores anomalies lower than "
                     f"normal images, worse than chance; check that --normal and --anomalies are "
                     f"not swapped, then re-fit (more epochs, another preset)")
    if model < reference:
        notes.append(f"the model's AUROC {model:.4f} is below the reference's {reference:.4f} "
                     f"({REFERENCE}): it separates these images worse than comparing raw pixels; "
                     f"train longer (--set stage1.epochs=...), try another preset, or use the "
                     f"reference")
    for t, n, a, _ in per_type:
        if a < 0.5 <= model:
            notes.append(f"anomaly type {t!r}: the model's AUROC {a:.4f} is below 0.5: it scores "
                         f"these {n} anomalies lower than normal images (inverted), although it "
                         f"ranks the anomalies as a whole above them")
    if reference < 0.5:
        notes.append(f"the reference's AUROC {reference:.4f} is below 0.5 (inverted): on raw pixels "
                     f"the anomalies lie closer to the normal images than these lie to each other"
                     + ("; with the model's below 0.5 too, check that --normal and --anomalies "
                        "are not swapped" if model < 0.5 else ""))
    return notes


USAGE = "as in: anomem evaluate MODEL --normal SRC --anomalies SRC (or MODEL LIST.csv)"


def run(args: argparse.Namespace) -> int:
    sources = [("LIST", args.list), ("--normal", args.normal), ("--anomalies", args.anomalies)]
    check_model_argument(args.model, USAGE, [src for _, src in sources])
    check_image_sources(sources, f"the model file goes first, {USAGE}")
    det = load_detector(args.model)
    threshold = model_threshold(det, args.threshold, args.model)
    normal_e, anom_e = labelled_sources(args)
    size, progress = det.config_.backbone.image_size, not args.quiet and auto_progress()
    normal, normal_e = load_entries(normal_e, size, args.bad_images, progress, "normal images")
    anom, anom_e = load_entries(anom_e, size, args.bad_images, progress, "anomalies")
    if normal.skipped or anom.skipped:
        print(f"anomem evaluate: warning: {format_skipped(normal.skipped + anom.skipped)}",
              file=sys.stderr)
    images = torch.cat([normal.images, anom.images])
    labels = np.r_[np.zeros(len(normal_e), np.int64), np.ones(len(anom_e), np.int64)]
    scores = det.decision_function(images)
    metrics = detection_metrics(labels, scores, threshold)
    metrics["reference_auroc"] = auroc(labels, leave_one_out_scores(images, labels, REFERENCE_SIZE))
    per_type = _per_type(labels, scores, threshold, ["normal"] * len(normal_e) + [e.group for e in anom_e])
    notes = verdict(metrics["auroc"], metrics["reference_auroc"], per_type)
    report = _write(args, det, images, labels, scores, threshold, metrics, per_type, notes,
                    normal_e + anom_e)
    print(f"{len(normal_e)} normal, {len(anom_e)} anomalous images; threshold {threshold:.6g}")
    print(f"  AUROC          {metrics['auroc']:.4f}   (reference {metrics['reference_auroc']:.4f}: "
          f"{REFERENCE})")
    print(f"  AUPR           {metrics['aupr']:.4f}")
    print(f"  FPR at 95% TPR {metrics['fpr_at_95_tpr']:.4f}")
    print(f"  F1             {metrics['f1']:.4f}  (precision {metrics['precision']:.4f}, "
          f"recall {metrics['recall']:.4f})")
    for t, n, a, d in per_type:
        print(f"  {t}: {n} images, AUROC {a:.4f}, detected {100 * d:.1f}%")
    for note in notes:
        print(f"  warning: {note}")
    print(f"report: {report}")
    return 0


def _per_type(labels: np.ndarray, scores: np.ndarray, threshold: float, types: list[str]
              ) -> list[tuple[str, int, float, float]]:
    """(type, images, AUROC against all normals, detection rate) per anomaly type."""
    rows = []
    for t in sorted({k for k, y in zip(types, labels, strict=True) if y}):
        mask = np.array([k == t for k in types]) & (labels == 1)
        keep = mask | (labels == 0)
        rows.append((t, int(mask.sum()), auroc(labels[keep], scores[keep]),
                     float((scores[mask] > threshold).mean())))
    return rows


def _write(args: argparse.Namespace, det: AnoMem | AnoMemEnsemble, images: torch.Tensor,
           labels: np.ndarray, scores: np.ndarray, threshold: float, metrics: dict, per_type: list,
           notes: list[str], entries: list[Entry]) -> Path:
    """metrics.json, scores.csv and the report; returns the report's path."""
    out = Path(args.report)
    types = ["normal" if y == 0 else e.group for e, y in zip(entries, labels, strict=True)]
    atomic_write_text(out / "metrics.json", json.dumps(
        {**metrics, "reference": REFERENCE, "notes": notes,
         "per_type": {t: {"images": n, "auroc": a, "detection_rate": d} for t, n, a, d in per_type}},
        indent=2))
    atomic_write_text(out / "scores.csv", csv_text(
        ("path", "score", "decision", "truth", "type"),
        [(str(e.path), f"{s:.6g}", "anomaly" if s > threshold else "normal",
          "anomaly" if y else "normal", t)
         for e, s, y, t in zip(entries, scores, labels, types, strict=True)]))
    mode = "semi-supervised" if det.semi_supervised else "one-class"
    sources = ", ".join(s for s in (args.list, args.normal, args.anomalies) if s)
    if args.threshold is not None:
        origin = "given with --threshold"
    elif det.threshold_normals_:
        origin = f"stored in the model: {describe(det.threshold_normals_, det.config_.scoring.target_frr)}"
    else:
        origin = "stored in the model"
    summary = (f"Model {args.model} ({mode}, {det.config_.backbone.arch}, {det.config_.backbone.image_size}x"
               f"{det.config_.backbone.image_size} px input). {int((labels == 0).sum())} normal images and "
               f"{int(labels.sum())} anomalies from {sources}. Threshold {threshold:.6g} ({origin}).")
    return write_report(out, det, labels=labels, scores=scores, threshold=threshold,
                        names=[str(e.path) for e in entries], images=images, metrics=metrics,
                        per_type=per_type, summary=summary, fmt=args.format, top=args.top,
                        reference=REFERENCE, notes=notes)

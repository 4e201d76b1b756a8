"""'anomem evaluate': detection metrics and a report on labelled image folders.

Scores every image under '--normal' (truth: normal) and '--anomalies'
(truth: anomaly; each sub-folder is an anomaly type) and prints:

  AUROC          probability that an anomaly scores above a normal image
  AUPR           area under precision-recall (average precision), anomalies positive
  FPR at 95% TPR share of normal images flagged when 95% of anomalies are found
  F1             of the decisions score > threshold (the model's, or --threshold)

plus the AUROC and detection rate of each anomaly type.  The report folder
gets 'report.html' (or 'report.md') with 'roc.png', 'histogram.png'
(normal vs anomaly scores and the threshold) and 'top_anomalies.png' (the
highest-scoring images with heatmaps), 'metrics.json' and 'scores.csv'.

examples:
  anomem evaluate parts.anomem --normal test/good --anomalies test/defects
  anomem evaluate parts.anomem --normal good/ --anomalies bad/ --report out/ --format md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from anomem.cli.score import model_threshold
from anomem.data.folders import find_images, format_skipped, group_name, load_images
from anomem.detector import AnoMem
from anomem.reports.metrics import auroc, detection_metrics
from anomem.reports.report import csv_text, write_report
from anomem.serialization import atomic_write_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="AUROC, AUPR, FPR@95%%TPR, F1 and a report on labelled folders",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model file written by 'anomem fit'")
    p.add_argument("--normal", required=True, metavar="DIR", help="folder of normal test images")
    p.add_argument("--anomalies", required=True, metavar="DIR",
                   help="folder of anomalous test images, one sub-folder per anomaly type")
    p.add_argument("--report", default="report", metavar="DIR", help="report folder (default: report)")
    p.add_argument("--format", choices=("html", "md"), default="html",
                   help="report format: html or md (Markdown) (default: html)")
    p.add_argument("--threshold", type=float, metavar="T", help="threshold to use instead of the model's")
    p.add_argument("--top", type=int, default=8, metavar="K",
                   help="most anomalous images shown with heatmaps (default: 8)")
    p.add_argument("--bad-images", choices=("fail", "skip"), default="fail",
                   help="unreadable or truncated image files: stop with an error (default) or skip "
                        "them with a listed warning")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    det = AnoMem.load(args.model)
    threshold = model_threshold(det, args.threshold, args.model)
    size, progress = det.config.image_size, not args.quiet
    normal = load_images(find_images(args.normal, "normal"), size, args.bad_images, progress,
                         "normal images")
    anom = load_images(find_images(args.anomalies, "anomalies"), size, args.bad_images, progress,
                       "anomalies")
    if normal.skipped or anom.skipped:
        print(f"anomem evaluate: warning: {format_skipped(normal.skipped + anom.skipped)}",
              file=sys.stderr)
    images = torch.cat([normal.images, anom.images])
    paths = normal.paths + anom.paths
    labels = np.r_[np.zeros(len(normal.paths), np.int64), np.ones(len(anom.paths), np.int64)]
    types = ["normal"] * len(normal.paths) + [group_name(args.anomalies, p) for p in anom.paths]
    scores = det.decision_function(images)
    metrics = detection_metrics(labels, scores, threshold)
    per_type = []
    for t in sorted(set(types[len(normal.paths):])):
        mask = np.array([k == t for k in types])
        keep = mask | (labels == 0)
        per_type.append((t, int(mask.sum()), auroc(labels[keep], scores[keep]),
                         float((scores[mask] > threshold).mean())))
    out = Path(args.report)
    atomic_write_text(out / "metrics.json", json.dumps(
        {**metrics, "per_type": {t: {"images": n, "auroc": a, "detection_rate": d}
                                 for t, n, a, d in per_type}}, indent=2))
    atomic_write_text(out / "scores.csv", csv_text(
        ("path", "score", "decision", "truth", "type"),
        [(str(p), f"{s:.6g}", "anomaly" if s > threshold else "normal",
          "anomaly" if y else "normal", t) for p, s, y, t in zip(paths, scores, labels, types, strict=True)]))
    mode = "semi-supervised" if det.semi_supervised else "one-class"
    summary = (f"Model {args.model} ({mode}, {det.config.arch}, {size}x{size} px input). "
               f"{len(normal.paths)} normal images from {args.normal}, {len(anom.paths)} anomalies "
               f"from {args.anomalies}. Threshold {threshold:.6g} "
               f"({'given with --threshold' if args.threshold is not None else 'stored in the model'}).")
    report = write_report(out, det, labels=labels, scores=scores, threshold=threshold,
                          names=[str(p) for p in paths], images=images, metrics=metrics,
                          per_type=per_type, summary=summary, fmt=args.format, top=args.top)
    print(f"{len(normal.paths)} normal, {len(anom.paths)} anomalous images; threshold {threshold:.6g}")
    print(f"  AUROC          {metrics['auroc']:.4f}")
    print(f"  AUPR           {metrics['aupr']:.4f}")
    print(f"  FPR at 95% TPR {metrics['fpr_at_95_tpr']:.4f}")
    print(f"  F1             {metrics['f1']:.4f}  (precision {metrics['precision']:.4f}, "
          f"recall {metrics['recall']:.4f})")
    for t, n, a, d in per_type:
        print(f"  {t}: {n} images, AUROC {a:.4f}, detected {100 * d:.1f}%")
    print(f"report: {report}")
    return 0

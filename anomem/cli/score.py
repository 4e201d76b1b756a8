"""'anomem score': anomaly scores and decisions for image files and folders.

Writes a CSV with one row per image: 'path,score,decision' where a higher
score is more anomalous and decision is 'anomaly' when score > threshold
(the threshold stored in MODEL unless '--threshold' is given), else
'normal'.  Folders are searched at any depth for PNG, JPEG, BMP and TIFF
files; a '.txt' (one path per line) or '.csv' ('path' column) list file
names images, relative to the list's folder.  With '--heatmaps DIR' one PNG
per image, at the image's own size, shows where it deviates from the
memorised normal patterns (Eq. 8 at the finest memory scale, or fused over
scales with scoring.heatmap_scales=all: the map of AnoMem.anomaly_map) in
colour over the image in gray, on one colour scale for all images of the
run, with a cyan contour around the pixels above the model's pixel threshold
(set by 'anomem fit' on held-out normal images; a model file written before
it has none, and a warning says so); images smaller than 128 px are enlarged
by a whole factor.  The heatmaps mirror the input tree
('test/defects/crazing/crazing_100.jpg' given as 'test/defects' becomes
'DIR/defects/crazing/crazing_100.png'), and images that would share a name
keep their extension ('crazing_100_png.png').

examples:
  anomem score parts.anomem new_parts/ -o scores.csv
  anomem score parts.anomem a.png b.jpg --threshold 1.2 --heatmaps heatmaps/
  anomem score parts.anomem new_parts.txt -o scores.csv
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from anomem.cli.paths import check_image_sources, check_model_argument
from anomem.data.folders import format_skipped
from anomem.data.sources import expand_sources, load_entries, mirror_names
from anomem.detector import AnoMem
from anomem.ensemble import AnoMemEnsemble, load_detector
from anomem.errors import InvalidInputError
from anomem.progress import auto_progress
from anomem.reports.report import csv_text, write_heatmaps
from anomem.serialization import atomic_write_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score images with a fitted model: CSV of path, score, decision",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model file written by 'anomem fit'")
    p.add_argument("paths", metavar="PATH", nargs="+",
                   help="image files, folders and/or .csv/.txt lists of image paths")
    p.add_argument("-o", "--output", default="-", metavar="CSV",
                   help="CSV file to write (default: - for standard output)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="decision threshold to use instead of the model's")
    p.add_argument("--heatmaps", metavar="DIR",
                   help="write one heatmap overlay PNG per image here, at the image's own size")
    p.add_argument("--bad-images", choices=("fail", "skip"), default="fail",
                   help="unreadable or truncated image files: stop with an error (default) or skip "
                        "them with a listed warning")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (by default it is shown only on a terminal)")


def model_threshold(det: AnoMem | AnoMemEnsemble, explicit: float | None, path: str) -> float:
    """'explicit' when given, else the threshold stored in the model file."""
    if explicit is not None:
        return float(explicit)
    if det.threshold_ is None:
        raise InvalidInputError(f"model file {path!r} stores no threshold; pass --threshold T")
    return float(det.threshold_)


USAGE = "as in: anomem score MODEL PATH [PATH ...]"


def run(args: argparse.Namespace) -> int:
    check_model_argument(args.model, USAGE, args.paths)
    check_image_sources([("PATH", p) for p in args.paths], f"the model file goes first, once, {USAGE}")
    det = load_detector(args.model)
    loaded, entries = load_entries(expand_sources(args.paths), det.config_.backbone.image_size,
                                   args.bad_images, not args.quiet and auto_progress(), "images")
    if loaded.skipped:
        print(f"anomem score: warning: {format_skipped(loaded.skipped)}", file=sys.stderr)
    threshold = model_threshold(det, args.threshold, args.model)
    scores = det.decision_function(loaded.images, args.batch_size)
    rows = [(str(p), f"{s:.6g}", "anomaly" if s > threshold else "normal")
            for p, s in zip(loaded.paths, scores, strict=True)]
    text = csv_text(("path", "score", "decision"), rows)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(args.output, text)
    if args.heatmaps:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_heatmaps(Path(args.heatmaps), det, mirror_names(entries), loaded.paths,
                           loaded.images, args.batch_size)
        for w in caught:
            print(f"anomem score: warning: {w.message}", file=sys.stderr)
    n_anom = sum(r[2] == "anomaly" for r in rows)
    print(f"anomem score: {len(rows)} images, {n_anom} anomalies at threshold {threshold:.6g}"
          + (f"; scores in {args.output}" if args.output != "-" else "")
          + (f"; heatmaps in {args.heatmaps}" if args.heatmaps else ""), file=sys.stderr)
    return 0

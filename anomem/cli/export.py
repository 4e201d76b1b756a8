"""'anomem export': write a fitted model as TorchScript or ONNX for deployment.

The exported graph takes a float32 batch (N, 3, S, S) of RGB images in [0, 1],
resized to the model's side S (shown after export), and returns the anomaly
scores (N,), higher = more anomalous; an image is an anomaly when its score
is above the threshold stored in the file's metadata (TorchScript: extra file
'anomem.json'; ONNX: 'metadata_props').  Load a TorchScript file with
'torch.jit.load' and an ONNX file with 'onnxruntime.InferenceSession'
(input 'images', output 'scores').

After writing, the exported model is run on check images ('--check' files
or folders; default: 16 fixed random images) and its scores are compared with
the Python model's: the export fails if they differ by more than 1e-4.

examples:
  anomem export parts.anomem --format onnx
  anomem export parts.anomem --format torchscript -o parts.pt --check good_parts/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from anomem.cli.paths import check_model_argument
from anomem.data.folders import collect_images, load_images
from anomem.ensemble import load_detector
from anomem.export import FORMATS, SUFFIX, ExportError, export_model, verify_export

N_RANDOM_CHECKS = 16


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to TorchScript or ONNX (scores checked to 1e-4)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model file written by 'anomem fit'")
    p.add_argument("--format", required=True, choices=FORMATS, help="torchscript or onnx")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="file to write (default: MODEL with .pt or .onnx instead of its suffix)")
    p.add_argument("--check", nargs="+", metavar="PATH",
                   help="image files or folders to compare exported and Python scores on")


def run(args: argparse.Namespace) -> int:
    check_model_argument(args.model, "as in: anomem export MODEL --format onnx", args.check or ())
    det = load_detector(args.model, device="cpu")
    side = det.config_.backbone.image_size
    out = Path(args.output) if args.output else Path(args.model).with_suffix(SUFFIX[args.format])
    if args.check:
        images = load_images(collect_images(args.check), side, "fail", what="check images").images
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (N_RANDOM_CHECKS, 3, side, side), generator=g, dtype=torch.uint8)
    export_model(det, out, args.format)
    try:
        diff = verify_export(det, out, args.format, images)
    except ExportError:
        out.unlink(missing_ok=True)  # never leave a model that scores differently
        raise
    print(f"anomem export: {args.format} model written to {out}; input float32 (N, 3, {side}, {side}) "
          f"RGB in [0, 1], output (N,) scores, threshold {det.threshold_}; max score difference to "
          f"the Python model on {len(images)} images: {diff:.2g}", file=sys.stderr)
    return 0

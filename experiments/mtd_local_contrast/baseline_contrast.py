"""A learning-free reference on the same MTD split: local contrast |x - blur(x)|.

The heatmap is the absolute difference between each tile and its gaussian
blur (sigma 8 px), smoothed (sigma 2 px); the image score is its maximum.  It
tells how much of the localisation metrics plain local contrast already gives.

Example (the committed run):
    python -m experiments.mtd_local_contrast.baseline_contrast --out experiments/mtd_local_contrast
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from anomem.data.mtd import read_mtd, split_mtd
from anomem.localisation import gaussian_smooth
from anomem.reports.pixel_metrics import localisation_metrics
from anomem.serialization import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="experiments/mtd_local_contrast")
    p.add_argument("--side", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-fraction", type=float, default=0.7)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    test = split_mtd(read_mtd(side=args.side), args.train_fraction, args.seed).test
    x = torch.from_numpy(test.images.astype(np.float32) / 255)
    heat = gaussian_smooth((x - gaussian_smooth(x, 8.0)).abs(), 2.0).numpy()
    res = localisation_metrics(test.labels, heat.reshape(len(heat), -1).max(1), test.masks, heat,
                               test.pixel_valid)
    record = {"command": "python -m experiments.mtd_local_contrast.baseline_contrast "
                         + " ".join(sys.argv[1:] if argv is None else argv),
              "side": args.side, "seed": args.seed, "train_fraction": args.train_fraction,
              "results": res}
    atomic_write_text(Path(args.out) / "baseline_contrast.json", json.dumps(record, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

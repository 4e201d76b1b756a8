"""What the position head (``scoring.heatmap_reader=head`` or ``tuned``) costs beside the fit without it.

Fits the ``mtd`` preset on the training tiles of Magnetic Tile Defects' seed-0 split
(``--epochs`` of stage 1, one thread) once reading the memory and once with the head
(``--reader``), in one process, and times both fits and the heatmaps of 200 test tiles
read each way from the second fit.  One JSON line; the ratios are what to compare across
machines.

    python benchmarks/localisation/head_cost.py [--epochs 2] [--reader tuned]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from anomem import AnoMem
from anomem.data.mtd import read_mtd, split_mtd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--reader", choices=("head", "tuned"), default="head")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    split = split_mtd(read_mtd(side=128), 0.7, 0)
    seconds = {}
    for reader in ("memory", args.reader):
        t = time.perf_counter()
        det = AnoMem("mtd", seed=0, device="cpu", stage1_epochs=args.epochs,
                     heatmap_reader=reader).fit(split.train.images, validation_fraction=0.0)
        seconds[f"fit_{reader}"] = time.perf_counter() - t
    test = split.test.images[:200]
    for reader in (args.reader, "memory"):
        det.network_.config = det.network_.config.replace(**{"scoring.heatmap_reader": reader})
        t = time.perf_counter()
        det.anomaly_map(test)
        seconds[f"maps_{reader}"] = time.perf_counter() - t
    row = {"epochs": args.epochs, "n_train": len(split.train.images), "reader": args.reader,
           "seconds": {k: round(v, 2) for k, v in seconds.items()},
           "head_seconds": round(seconds[f"fit_{args.reader}"] - seconds["fit_memory"], 1),
           "map_ratio_head_to_memory": round(seconds[f"maps_{args.reader}"] / seconds["maps_memory"], 2),
           "threads": 1, "torch": torch.__version__}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

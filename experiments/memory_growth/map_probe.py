"""How many prototypes does the heatmap need? One fitted tile encoder, memories grown at consolidation.

Loads a one-class detector saved by ``benchmarks/localisation/run_mtd.py --save-model FILE``
(the same ``--seed`` draws the same split), grows a copy of every memory to f x N_mem
patterns and consolidates it again on the training tiles
(:func:`experiments.memory_growth.growth_probe.regrown`, then ``consolidate`` Lloyd steps),
and scores the test tiles: image AUROC and the package's heatmap (pixel AUROC, AUPRO), per
defect type.  ``f=1`` is the second consolidation alone (the control).  One JSON line per
factor.

    python -m experiments.memory_growth.map_probe --model FILE --seed S --factors 1 4 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from anomem import AnoMem
    from anomem.data.convert import to_image_tensor
    from anomem.data.mtd import read_mtd, split_mtd
    from anomem.stages.common import RunOptions
    from anomem.stages.consolidate import consolidate_prototypes
    from benchmarks.localisation.run_mtd import evaluate
    from experiments.memory_growth.growth_probe import regrown

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--sigma", type=float, default=4.0)
    p.add_argument("--name", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    det = AnoMem.load(args.model)
    split = split_mtd(read_mtd(side=det.config_.backbone.image_size), 0.7, args.seed)
    x = to_image_tensor(split.train.images, det.config_.backbone.image_size, "images")
    for f in args.factors:
        t0 = time.time()
        grown = regrown(det, f)
        consolidate_prototypes(grown.network, x, torch.ones(len(x), dtype=torch.long), RunOptions())
        grown.network.eval()
        scores = grown.decision_function(split.test.images, batch_size=64)
        maps = grown.anomaly_map(split.test.images, sigma=args.sigma)
        row = {"name": args.name, "seed": args.seed, "factor": f,
               "metrics": evaluate(split.test, scores, maps), "t": round(time.time() - t0)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which fusion of the memory scales' position maps localises tile defects? One fitted encoder.

Loads a one-class detector saved by ``benchmarks/localisation/run_mtd.py --save-model FILE``
(the same ``--seed`` draws the same split) and reads its per-position scale scores
(``AnoMemModel.score_and_maps``) under several fusions, each smoothed (sigma 4 px) and
measured per defect type:

* ``finest``: the earliest stage's map (the package's default heatmap);
* ``all``: every spatial scale weighed by Eq. 13's alphas (``heatmap_scales=all``);
* ``z-mean`` / ``z-max``: each stage's map standardised by the mean and standard deviation
  of its values over ``--reference`` training tiles (in-sample: the memories saw them),
  then averaged or, pixel by pixel, the largest (a small defect can raise the fine map
  alone, a large one the coarse map).

A stage's map is the mean, weighed by the network's alphas, of its ``scoring.views`` views.  One JSON line.

    python -m experiments.fusion.map_probe --model FILE --seed S
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    import torch

    from anomem import AnoMem
    from anomem.data.convert import to_image_tensor
    from anomem.data.mtd import read_mtd, split_mtd
    from anomem.localisation import fuse_maps, gaussian_smooth
    from anomem.stages.common import RunOptions, map_batches
    from benchmarks.localisation.run_mtd import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--reference", type=int, default=200, help="training tiles that set the z-scores")
    p.add_argument("--sigma", type=float, default=4.0)
    p.add_argument("--name", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    det = AnoMem.load(args.model)
    net, side = det.network_.eval(), det.config_.backbone.image_size
    split = split_mtd(read_mtd(side=side), 0.7, args.seed)
    spatial = [s for s in net.scales if not s.pooled]
    stages = sorted({s.stage for s in spatial})

    def stage_maps(images) -> dict[int, torch.Tensor]:
        x = to_image_tensor(images, side, "images")
        out = map_batches(net, x, RunOptions(), lambda m, b: m.score_and_maps(b)[1], 64)
        maps = {}
        for st in stages:
            mine = [s for s in spatial if s.stage == st]
            w = net.alphas[[s.index for s in mine]]
            maps[st] = fuse_maps([torch.cat([o[s.index] for o in out]) for s in mine], w / w.sum(),
                                 (side, side), 0.0)
        return maps

    ref = stage_maps(split.train.images[:args.reference])
    test = stage_maps(split.test.images)
    stats = {st: (float(m.mean()), float(m.std())) for st, m in ref.items()}
    z = [(test[st] - stats[st][0]) / stats[st][1] for st in stages]
    alpha = {st: float(sum(net.alphas[s.index] for s in spatial if s.stage == st)) for st in stages}
    total = sum(alpha.values())
    readings = {"finest": test[stages[0]],
                "all": sum(alpha[st] / total * test[st] for st in stages),
                "z-mean": torch.stack(z).mean(0), "z-max": torch.stack(z).amax(0)}
    scores = det.decision_function(split.test.images, batch_size=64)
    row = {"name": args.name, "seed": args.seed, "reference_stats": stats, "metrics": {
        k: evaluate(split.test, scores, gaussian_smooth(m, args.sigma).numpy()) for k, m in readings.items()}}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

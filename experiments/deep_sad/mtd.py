"""The package's Deep SAD on Magnetic Tile Defects, beside AnoMem's image AUROC at the ``mtd`` preset.

The splits of ``benchmarks/localisation/run_mtd.py`` (:func:`anomem.data.mtd.split_mtd`,
``train_fraction`` 0.7, the seed drawing both the split and the labelled defects): one-class,
Deep SVDD (Deep SAD without labels) on the training tiles, scored on the test split;
semi-supervised, Deep SAD on the training tiles plus ``--labelled-per-type`` labelled
defects of each type, scored on the test split without them.  The ``mtd`` preset's backbone,
augmentation, batch and stage-1 epochs, as AnoMem's rows use.  One JSON line per seed.

    python -m experiments.deep_sad.mtd --seed S >> experiments/deep_sad/mtd.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.metrics import roc_auc_score

    from anomem.baselines.deepsad import DeepSAD
    from anomem.data.mtd import read_mtd, split_mtd
    from anomem.detector import resolve_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labelled-per-type", type=int, default=5)
    p.add_argument("--preset", default="mtd")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    config = resolve_config(args.preset, {})
    data = read_mtd(side=config.backbone.image_size)
    row = {"name": "deepsad_mtd", "preset": args.preset, "stage1_epochs": config.stage1.epochs,
           "seed": args.seed, "labelled_per_type": args.labelled_per_type}
    for key, k in (("one_class", 0), ("semi_supervised", args.labelled_per_type)):
        split = split_mtd(data, 0.7, args.seed, k)
        det = DeepSAD(args.preset, seed=args.seed, device="cpu").fit(split.train.images,
                                                                     split.train.labels)
        row[key] = round(float(roc_auc_score(split.test.labels,
                                             det.decision_function(split.test.images))), 4)
        row[f"n_labelled_{key}"] = int(split.train.labels.sum())
    row["t"] = round(time.time() - t0)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

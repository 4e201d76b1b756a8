"""Which verdict breaks the thin-anomaly guard: each of the four literal values reverted alone.

The guard (``tests/test_quality.py::test_empty_and_thin_images_score_above_the_normals``):
fitted on digit 5 (``digits`` preset, seed 0), an all-black and an all-white
image and the five test anomalies with the least ink must score above the
95th percentile of the class's test normals.  Each row prints the seven
scores divided by that percentile (a guard pass: every value above 1) for
the four verdicts of the validation (``new``), each one reverted alone, and
today's defaults (``old``).

    python -m experiments.validation.thin_guard
    python -m experiments.validation.thin_guard --seeds 1 2 --only new old   # other fit seeds
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from anomem import AnoMem
from anomem.data.digits import load_digits_split

NEW = {"memory.beta": 2.0, "memory.hopfield_steps": 100, "extensions.reseed_dead": False,
       "scoring.calibrate": True}
OLD = {"memory.beta": 10.0, "memory.hopfield_steps": 3, "extensions.reseed_dead": True,
       "scoring.calibrate": False}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="fit seeds (the guard's: 0)")
    p.add_argument("--only", nargs="+", help="row names to run (default: every row)")
    args = p.parse_args()
    torch.set_num_threads(1)
    d = load_digits_split(seed=0)
    normals = d.x_train[d.y_train == 5]
    anomalies = d.x_test[d.y_test != 5]
    thin = anomalies[np.argsort(anomalies.reshape(len(anomalies), -1).sum(1))[:5]]
    blank = np.stack([np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)])
    rows = {"new": NEW, **{f"new, {k}={OLD[k]}": {**NEW, k: OLD[k]} for k in NEW}, "old": OLD}
    for seed in args.seeds:
        for name, keys in rows.items():
            if args.only and name not in args.only:
                continue
            det = AnoMem("digits", seed=seed, **keys).fit(normals, validation_fraction=0.0,
                                                          progress=False)
            cut = np.quantile(det.decision_function(d.x_test[d.y_test == 5]), 0.95)
            ratios = det.decision_function(np.concatenate([blank, thin])) / cut
            print(f"seed {seed}, {name}: {np.round(ratios, 2).tolist()}", flush=True)


if __name__ == "__main__":
    main()

"""The thin-anomaly guard over fit seeds: the current defaults, the verdicts of 3c78590, the ones before.

The guard (``tests/test_quality.py::test_empty_and_thin_images_score_above_the_normals``):
fitted on digit 5 (``digits`` preset), an all-black and an all-white image
and the five test anomalies with the least ink against the class's test
normals.  Each row prints, for one fit seed: the two blanks' ranks among the
normals (share of normals below them; the guard wants > 0.9), the AUROC of
the seven against the normals (the guard wants >= 0.9), each of the seven's
score over the normals' 95th percentile (the guard as first written wanted
every value above 1; meaningful while that percentile is above 0) and digit
5's whole test AUROC.  Rows: the current defaults (``now``), the four verdicts
(``new``: the defaults from commit 3c78590 until beta 10 and 3 Hopfield steps
returned), each of them reverted alone, and the defaults before them (``old``).

    python -m experiments.validation.thin_guard                           # seed 0, every row
    python -m experiments.validation.thin_guard --seeds 0 1 2 3 4 5 6 7 --only now new old
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from anomem import AnoMem
from anomem.data.digits import load_digits_split
from anomem.protocols.one_vs_all import auroc

#: the four verdicts, the defaults of commit 3c78590 (given explicitly, as OLD is)
NEW = {"memory.beta": 2.0, "memory.hopfield_steps": 100, "extensions.reseed_dead": False,
       "scoring.calibrate": True}
#: the defaults before them
OLD = {"memory.beta": 10.0, "memory.hopfield_steps": 3, "extensions.reseed_dead": True,
       "scoring.calibrate": False}


def against(normals: np.ndarray, anomalies: np.ndarray) -> float:
    """AUROC of ``anomalies`` (positives) against ``normals``."""
    return auroc(np.r_[np.zeros(len(normals)), np.ones(len(anomalies))], np.r_[normals, anomalies])


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
    rows = {"now": {}, "new": NEW, **{f"new, {k}={OLD[k]}": {**NEW, k: OLD[k]} for k in NEW}, "old": OLD}
    for seed in args.seeds:
        for name, keys in rows.items():
            if args.only and name not in args.only:
                continue
            det = AnoMem("digits", seed=seed, **keys).fit(normals, validation_fraction=0.0,
                                                          progress=False)
            held = det.decision_function(d.x_test[d.y_test == 5])
            seven = det.decision_function(np.concatenate([blank, thin]))
            ranks = [float((held < v).mean()) for v in seven[:2]]
            print(f"seed {seed}, {name}: blank ranks {np.round(ranks, 3).tolist()}, "
                  f"AUROC of the seven {against(held, seven):.3f}, "
                  f"over the 95th percentile {np.round(seven / np.quantile(held, 0.95), 2).tolist()}, "
                  f"class AUROC {against(held, det.decision_function(anomalies)):.4f}", flush=True)


if __name__ == "__main__":
    main()

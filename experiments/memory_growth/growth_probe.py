"""How large should consolidation grow the memories? One encoder, several ``consolidate_factor``.

For each task of the image sets of :mod:`experiments.tasks` (same splits and budgets) it
fits AnoMem once with ``consolidate_factor=1`` (stage 1 and its consolidation
do not depend on the factor before the growth), then, for each factor f,
grows a copy of the consolidated memories to f x N_mem and runs the
consolidation again (``consolidate`` Lloyd steps from those patterns) and
scores it.  ``f=1`` is that second consolidation alone (the control).  The
kNN column is the 1-NN on the same encoder.  One JSON line per class.

    python -m experiments.memory_growth.growth_probe --dataset digits --seed 0
    python -m experiments.memory_growth.growth_probe --dataset cifar --seed 0 --classes 0 1
    python -m experiments.memory_growth.growth_probe --dataset cifar-full --seed 0 --classes 1
    python -m experiments.variants.variant_probe --summary experiments/memory_growth/growth_probe.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

from experiments.tasks import task_source

FACTORS = (1, 2, 4, 8)


def regrown(det: Any, factor: int) -> Any:
    """A copy of the fitted detector ``det`` whose network is built with ``consolidate_factor``
    ``factor``: its weights, each memory's first N_mem patterns the consolidated ones of ``det``
    (as stage 1 leaves them before the growth)."""
    import torch

    from anomem.torch_model import AnoMemModel

    out = copy.deepcopy(det)
    out.config_ = det.config_.replace(consolidate_factor=factor)
    out.network_ = AnoMemModel(out.config_)
    state = det.network.state_dict()
    out.network_.load_state_dict({k: v for k, v in state.items() if not k.startswith("memories.")},
                                 strict=False)
    with torch.no_grad():
        for memory, fitted in zip(out.network_.memories, det.network.memories):
            memory.patterns[:memory.size] = fitted.patterns
    return out


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.metrics import roc_auc_score

    from anomem import AnoMem
    from anomem.baselines.knn import KNNDetector
    from anomem.data.convert import to_image_tensor
    from anomem.stages.common import RunOptions
    from anomem.stages.consolidate import consolidate_prototypes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("digits", "cifar", "cifar-full", "mtd"), default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    task_of, preset, budget = task_source(args.dataset, args.seed)
    for c in args.classes:
        t0 = time.time()
        t = task_of(c)
        det = AnoMem(preset, seed=args.seed, consolidate_factor=1, **budget).fit(
            t.x_train, t.labels_train, validation_fraction=0.0, progress=False)
        x = to_image_tensor(t.x_train, det.config_.backbone.image_size, "images")
        normal = torch.ones(len(x), dtype=torch.long)
        row = {"name": "growth", "ds": args.dataset, "seed": args.seed, "c": c}
        for f in FACTORS:
            grown = regrown(det, f)
            consolidate_prototypes(grown.network, x, normal, RunOptions())   # grows, then Lloyd
            grown.network.eval()
            row[f"f{f}"] = round(100 * roc_auc_score(t.labels_test, grown.decision_function(t.x_test)), 2)
        knn = KNNDetector(preset, k=1, encoder=det).fit(t.x_train, t.labels_train)
        row["knn"] = round(100 * roc_auc_score(t.labels_test, knn.decision_function(t.x_test)), 2)
        row["t"] = round(time.time() - t0)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

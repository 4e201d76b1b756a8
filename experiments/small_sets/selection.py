"""Can held-out normals tell, during stage 1, which epoch's encoder is astray on a small set?

After every stage-1 epoch the encoder's pooled features (:func:`trajectory.pooled`)
of the fit's own training images form a 1-NN bank and three AUROCs are read:

* ``test``: the fixed test set of the small set (what a user would get; never
  used to choose);
* ``paste`` / ``stain``: the fit's held-out normals (:func:`spread.fit_split`, the
  images :meth:`anomem.AnoMem.fit` keeps out of training) against a defective copy
  of each (:func:`experiments.validation.heatmaps.defective_copies`);
* ``rot``: the held-out normals against their copies rotated by 90, 180 and 270 degrees.

One JSON row per epoch.  A criterion that ranks the epochs as ``test`` does
could end stage 1 at its best epoch instead of its last.  ``--summary FILE``
reads such rows and prints, per set and class, the test AUROC of the last
epoch, of the first, and of the epoch each criterion ranks first (mean ± std
over seeds, sample std), with the criterion's Spearman correlation with ``test`` over the
epochs of a run (mean over seeds).

    python -m experiments.small_sets.selection --set-name cifar200 --class 0 --seed 4 \
        >> experiments/small_sets/selection.jsonl
    python -m experiments.small_sets.selection --summary experiments/small_sets/selection.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from anomem import AnoMem
from anomem.config import parse_override
from anomem.data.convert import to_image_tensor
from anomem.stages.common import RunOptions
from experiments.small_sets.spread import SET_NAMES, fit_split, small_task
from experiments.small_sets.trajectory import pooled
from experiments.validation.heatmaps import defective_copies

CRITERIA = ("paste", "stain", "rot")


def nn_auroc(bank: torch.Tensor, normal: torch.Tensor, anomalous: torch.Tensor) -> float:
    """AUROC of cosine 1-NN distances to ``bank``: ``anomalous`` rows against ``normal`` rows."""
    d = [1 - (q @ bank.t()).max(1).values for q in (normal, anomalous)]
    y = [0] * len(normal) + [1] * len(anomalous)
    return round(100 * roc_auc_score(y, torch.cat(d).numpy()), 2)


def summary(rows: list[dict]) -> str:
    """The Markdown table of ``--summary`` (see the module docstring)."""
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["set"], r["c"], r["seed"], r["epoch"])):
        runs[(r["set"], r["c"], r["seed"])].append(r)
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (name, c, _), run in runs.items():
        cell = cells[(name, c)]
        cell["last"].append(run[-1]["test"])
        cell["first"].append(run[0]["test"])
        for k in CRITERIA:
            cell[k].append(max(run, key=lambda r: r[k])["test"])
            cell["rho " + k].append(spearmanr([r[k] for r in run], [r["test"] for r in run]).statistic)
    cols = ["last", "first", *CRITERIA] + ["rho " + k for k in CRITERIA]
    out = ["| set, class | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for (name, c), cell in cells.items():
        out.append(f"| {name}, {c} | {len(cell['last'])} | " + " | ".join(
            f"{np.mean(cell[k]):.{2 if k.startswith('rho') else 1}f} ± "
            f"{np.std(cell[k], ddof=1):.{2 if k.startswith('rho') else 1}f}" for k in cols) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set-name", choices=SET_NAMES)
    p.add_argument("--summary", metavar="FILE", help="print the table of FILE's rows instead")
    p.add_argument("--class", dest="cls", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.summary:
        print(summary([json.loads(line) for line in open(args.summary)]))
        return 0
    if args.set_name is None:
        p.error("--set-name is required without --summary")
    torch.set_num_threads(1)
    t = small_task(args.set_name, args.cls)
    det = AnoMem(seed=args.seed, **dict(parse_override(o) for o in args.set))
    train, held = fit_split(len(t.x_train), args.seed)
    bad = torch.as_tensor(t.labels_test == 1)
    resized: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # the images at the model's size, once

    def probe(model, row) -> None:
        size = model.config.backbone.image_size
        if size not in resized:
            resized[size] = (to_image_tensor(t.x_train, size, "x"), to_image_tensor(t.x_test, size, "x"))
        x, x_test = resized[size]

        def feats(v: torch.Tensor) -> torch.Tensor:
            return pooled(model, v.float() / 255)

        bank, h = feats(x[train]), x[held]
        clean, test = feats(h), feats(x_test)
        row_out = {"set": args.set_name, "c": args.cls, "seed": args.seed, "epoch": row.get("epoch"),
                   "loss": round(row["loss"], 4), "test": nn_auroc(bank, test[~bad], test[bad])}
        for family in ("paste", "stain"):
            both, _ = defective_copies(h, args.seed, family)
            row_out[family] = nn_auroc(bank, clean, feats(both[len(h):]))
        rot = torch.cat([torch.rot90(h, k, (2, 3)) for k in (1, 2, 3)])
        row_out["rot"] = nn_auroc(bank, clean, feats(rot))
        print(json.dumps(row_out), flush=True)

    det.fit(t.x_train, progress=False, options=RunOptions(on_epoch=probe))
    return 0


if __name__ == "__main__":
    sys.exit(main())

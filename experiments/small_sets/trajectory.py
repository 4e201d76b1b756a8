"""Per-epoch 1-NN AUROC of the encoder while stage 1 trains on a small set: where a seed goes astray.

After every stage-1 epoch (``RunOptions(on_epoch=...)``, which draws no random
number) the pooled, normalised features of the memory stages (first view)
of the training images form a 1-NN bank and the fixed test set is scored by
cosine distance to it.  The encoder at its initialisation:
``python -m experiments.small_sets.spread ... --set stage1.epochs=0`` (its 1-NN column).

    python -m experiments.small_sets.trajectory --set-name cifar200 --class 0 --seed 4
    python -m experiments.small_sets.trajectory --set-name cifar200 --class 0 --seed 4 \
        --set pseudo_anomalies=none
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from anomem import AnoMem
from anomem.config import parse_override
from anomem.data.convert import to_image_tensor
from anomem.stages.common import RunOptions
from experiments.small_sets.spread import SET_NAMES, small_task


def pooled(model, x: torch.Tensor) -> torch.Tensor:
    """Concatenated, L2-normalised spatial means of the memory stages' maps, first view."""
    model.eval()
    with torch.no_grad():
        out = [torch.cat([F.normalize(z.mean((2, 3)), dim=1)
                          for z in model.view_features(x[i:i + 256], 0)[:model.n_maps]], 1)
               for i in range(0, len(x), 256)]
    model.train()
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set-name", choices=SET_NAMES, required=True)
    p.add_argument("--class", dest="cls", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t = small_task(args.set_name, args.cls)
    det = AnoMem(seed=args.seed, **dict(parse_override(o) for o in args.set))
    x_train = t.x_train
    x_test = t.x_test

    def probe(model, row) -> None:
        size = model.config.backbone.image_size
        a = pooled(model, to_image_tensor(x_train, size, "x").float() / 255)
        b = pooled(model, to_image_tensor(x_test, size, "x").float() / 255)
        auc = roc_auc_score(t.labels_test, (-(b @ a.t()).max(1).values).numpy())
        print(f"epoch {row.get('epoch')}: 1-NN AUROC {100 * auc:.2f}, loss {row['loss']:.3f}", flush=True)

    det.fit(t.x_train, progress=False, options=RunOptions(on_epoch=probe))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Can a small head trained on pasted defects read a fitted encoder's positions better than the memory?

Loads a one-class detector saved by ``benchmarks/localisation/run_mtd.py --save-model FILE``
(the same ``--seed`` draws the same split) and keeps it frozen.  A position head
reads, at every spatial memory scale s of the first test-time view (no flip), the
deviation vectors Delta(s)_ij of Eq. 8
(``--input delta``), the feature vectors z(s)_ij (``z``) or both (``both``): a 1 x 1
convolution per scale to ``--hidden`` channels, each upsampled (bilinear) to the finest
grid and summed, then ReLU, a 3 x 3 and a 1 x 1 convolution to one logit per position.
It is trained with binary cross-entropy against the share of pasted pixels in each
cell, on training tiles with a :func:`anomem.augment.local_pseudo_anomalies` defect
pasted into a copy of each (masks at ``--defect-scale``; the detector is not changed).
With ``--labelled K`` the split moves K real defects of each type into training (as the
semi-supervised protocol does) and ``--labelled-batch`` of them, with their masks, join
every batch; the test split then lacks them.

Its test map (logits at the finest grid, upsampled to the input, smoothed by sigma) is
measured per defect type beside the package's map of the same detector
(``AnoMem.anomaly_map``) and the sum of both standardised on the training tiles.
The image score is the detector's own.  One JSON line.

    python -m experiments.position_head.probe --model FILE --seed S [--input delta] [--labelled 5]

The package now holds this head (``scoring.heatmap_reader=head``:
:class:`anomem.torch_model.PositionHead`, :mod:`anomem.stages.position_head`), with edges
replicated in its 3 x 3 convolution and random streams of its own; the probe keeps its
zero-padded copy and its draws so that its committed rows reproduce.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class PositionHead(nn.Module):
    """One logit per position of the finest grid from every spatial scale's vectors."""

    def __init__(self, channels: list[int], hidden: int) -> None:
        super().__init__()
        self.inp = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in channels)
        self.mix = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(hidden, 1, 1))

    def forward(self, maps: list[torch.Tensor], grid: torch.Size) -> torch.Tensor:
        h = sum(F.interpolate(conv(m), size=grid, mode="bilinear", align_corners=False)
                for conv, m in zip(self.inp, maps))
        return self.mix(h).squeeze(1)


def main(argv: list[str] | None = None) -> int:
    from anomem import AnoMem
    from anomem.augment import local_pseudo_anomalies
    from anomem.data.convert import to_image_tensor
    from anomem.data.mtd import read_mtd, split_mtd
    from anomem.localisation import gaussian_smooth
    from benchmarks.localisation.run_mtd import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--input", choices=("delta", "z", "both"), default="delta")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--defect-scale", type=float, default=2.0)
    p.add_argument("--sigma", type=float, default=4.0)
    p.add_argument("--labelled", type=int, default=0, metavar="K",
                   help="K labelled defects per type (with their masks) join the head's batches")
    p.add_argument("--labelled-batch", type=int, default=8)
    p.add_argument("--name", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    det = AnoMem.load(args.model)
    net, side = det.network_.eval(), det.config_.backbone.image_size
    for q in net.parameters():
        q.requires_grad_(False)
    split = split_mtd(read_mtd(side=side), 0.7, args.seed, labelled_per_type=args.labelled)
    spatial = [i for i, s in enumerate(net.view_scales(0)) if not s.pooled]

    def unit(images) -> torch.Tensor:
        return to_image_tensor(images, side, "images").float() / 255

    def inputs(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            z = net.features(x)
            d = net.deviations(z, view=0)
        parts = {"delta": (d,), "z": (z,), "both": (d, z)}[args.input]
        return [torch.cat([part[i] for part in parts], 1) for i in spatial]

    normal = split.train.types < 0
    train = unit(split.train.images[normal])
    marked = ~normal & split.train.has_mask
    real = unit(split.train.images[marked]) if marked.any() else torch.empty(0)
    real_y = 1 - torch.from_numpy(split.train.masks[marked]).float()
    probe_in = inputs(train[:2])
    grid = probe_in[0].shape[-2:]
    head = PositionHead([t.shape[1] for t in probe_in], args.hidden)
    opt = torch.optim.Adam(head.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    for _ in range(args.steps):
        idx = torch.randint(len(train), (args.batch,), generator=gen)
        v = train[idx]
        x, _, y, _ = local_pseudo_anomalies(v, v, torch.ones(len(v)), 1.0, gen,
                                            mask_scale=args.defect_scale)
        if len(real):
            pick = torch.randint(len(real), (args.labelled_batch,), generator=gen)
            x, y = torch.cat([x, real[pick]]), torch.cat([y, real_y[pick]])
        target = 1 - F.adaptive_avg_pool2d(y.unsqueeze(1), grid).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(head(inputs(x), grid), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    def head_map(images) -> torch.Tensor:
        x = unit(images)
        with torch.no_grad():
            out = torch.cat([head(inputs(b), grid) for b in x.split(64)])
        return F.interpolate(out.unsqueeze(1), size=(side, side), mode="bilinear",
                             align_corners=False).squeeze(1)

    test_head = gaussian_smooth(head_map(split.test.images), args.sigma)
    test_mem = torch.from_numpy(det.anomaly_map(split.test.images, sigma=args.sigma))
    ref = split.train.images[normal][:200]
    ref_head = gaussian_smooth(head_map(ref), args.sigma)
    ref_mem = torch.from_numpy(det.anomaly_map(ref, sigma=args.sigma))
    z_sum = ((test_head - ref_head.mean()) / ref_head.std()
             + (test_mem - ref_mem.mean()) / ref_mem.std())
    scores = det.decision_function(split.test.images, batch_size=64)
    row = {"name": args.name, "seed": args.seed, "model": args.model.rsplit("/", 1)[-1],
           "input": args.input, "hidden": args.hidden, "steps": args.steps, "batch": args.batch,
           "lr": args.lr, "defect_scale": args.defect_scale, "labelled": args.labelled,
           "n_labelled_masks": len(real),
           "loss_first_last": [sum(losses[:20]) / 20, sum(losses[-20:]) / 20],
           "seconds": round(time.time() - t0), "metrics": {
               k: evaluate(split.test, scores, m.numpy()) for k, m in
               (("head", test_head), ("anomem", test_mem), ("z-sum", z_sum))}}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

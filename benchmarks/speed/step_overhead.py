"""Stage-1 training step of AnoMem vs the bare backbone's two-view forward + backward.

Same batch, same two views (real CIFAR-10 images, augmented once), same
encoder initialisation; each variant is a full optimisation step (zero_grad,
forward, backward, SGD step):

* ``backbone``: the encoder up to the last memory stage on both views, loss =
  mean of the last map (nothing else);
* ``anomem_<negatives>``: :class:`anomem.stages.stage1.ContrastedMemoryObjective`
  (sampling, Hopfield retrieval Eq. 1/3, NT-Xent Eq. 4-5, variance Eq. 6,
  multi-scale Eq. 7) for each requested ``negatives`` form.

The augmentation is left out of both (it is the same work for both and is
measured in data_pipeline.py).  Variants alternate within each repetition;
the ratio of medians is reported, with the ratio of floating-point operations
per step (counted by :class:`torch.utils.flop_counter.FlopCounterMode`): the
least any implementation of the same arithmetic could cost.

    python -m benchmarks.speed.step_overhead                    # cpu preset, 1 thread
    python -m benchmarks.speed.step_overhead --set batch_size=256 --reps 9
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from anomem.augment import TwoViewAugment
from anomem.config import get_config, parse_override, to_dict
from anomem.data.cifar import cached_cifar10_jpeg
from anomem.data.convert import to_image_tensor
from anomem.data.locate import CIFAR10_JPEG, data_file
from anomem.stages.common import sgd_cosine
from anomem.stages.stage1 import ContrastedMemoryObjective
from anomem.torch_model import AnoMemModel
from benchmarks.speed.timing import interleaved, machine, save_json, summary

HERE = Path(__file__).parent


def _step_fn(cfg: Any, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, bare: bool) -> Any:
    torch.manual_seed(cfg.runtime.seed)
    model = AnoMemModel(cfg).train()
    objective = ContrastedMemoryObjective(model)
    params = list(model.encoder.parameters()) + ([] if bare else list(model.memories.parameters()))
    opt, _ = sgd_cosine(params, cfg.stage1.lr, cfg.stage1.momentum, cfg.stage1.weight_decay, 1000)
    both = torch.cat([v1, v2])

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if bare:
            loss = model.features(both)[-1].mean()
        else:
            loss, _ = objective(v1, v2, y)
        loss.backward()
        opt.step()
    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--negatives", nargs="+", default=["all", "same_position"])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "step_overhead.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = get_config(args.config, dict(parse_override(o) for o in args.overrides))
    split = cached_cifar10_jpeg(data_file(CIFAR10_JPEG))
    size = cfg.backbone.image_size
    x = to_image_tensor(split.x_train[:cfg.stage1.batch_size], size).float() / 255
    torch.manual_seed(0)
    v1, v2 = TwoViewAugment.of(size, cfg.stage1)(x)
    y = torch.ones(len(x))
    variants = {"backbone": _step_fn(cfg, v1, v2, y, bare=True)}
    for neg in args.negatives:
        variants[f"anomem_{neg}"] = _step_fn(cfg.replace(negatives=neg), v1, v2, y, bare=False)
    flops = {}
    for k, fn in variants.items():                      # one counted step each (also a warm-up)
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[k] = counter.get_total_flops()
    times = interleaved(variants, args.reps, warmup=1)
    stats = {k: summary(t) for k, t in times.items()}
    base = stats["backbone"]["median_s"]
    ratios = {k: s["median_s"] / base for k, s in stats.items() if k != "backbone"}
    result = {"command": "python -m benchmarks.speed.step_overhead " + " ".join(argv or sys.argv[1:]),
              "config": to_dict(cfg), "input": f"CIFAR-10 train images 0..{len(x) - 1}, two fixed "
                                                f"augmented views, {size}x{size}",
              "reps": args.reps, "machine": machine(), "median_ratio_vs_backbone": ratios,
              "flop_ratio_vs_backbone": {k: f / flops["backbone"] for k, f in flops.items()
                                         if k != "backbone"},
              "gflop_per_step": {k: f / 1e9 for k, f in flops.items()},
              "step_seconds": stats, "target_ratio": 1.3}
    save_json(args.out, result)
    for k, s in stats.items():
        print(f"{k:24s} median {s['median_s'] * 1000:8.1f} ms  (IQR {s['q1_s'] * 1000:.1f}-"
              f"{s['q3_s'] * 1000:.1f})  ratio {s['median_s'] / base:.3f}  "
              f"GFLOP {flops[k] / 1e9:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

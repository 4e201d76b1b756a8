"""Scoring cost of a config key's values in one process: ``consolidate_factor`` 1, 2, 4, 8 by default.

The network of a fit (:class:`anomem.torch_model.AnoMemModel` as built, untrained:
weights change neither speed nor size) at each value of ``--key`` (default
``consolidate_factor``; ``score_views`` compares the test-time views) scores
the same ``--test`` random images in batches of 256, in rotating order
(``--reps`` rounds after a warm-up); every network has the first one's
encoder.  The result is the median seconds per scoring, the ratio to the
first value, and the bytes of the memories.

    python -m benchmarks.speed.growth_cost --preset cpu --out benchmarks/speed/results/growth_cost_cpu.json
    python -m benchmarks.speed.growth_cost --preset cpu --key score_views --values single mirror flips
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from anomem.config import get_config, parse_override
from anomem.stages.common import RunOptions, map_batches
from anomem.torch_model import AnoMemModel
from benchmarks.speed.timing import interleaved, machine, save_json, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--key", default="consolidate_factor")
    p.add_argument("--values", nargs="+", default=["1", "2", "4", "8"])
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = get_config(args.preset)
    side = base.backbone.image_size
    x = torch.randint(0, 256, (args.test, 3, side, side), dtype=torch.uint8)
    values = [parse_override(f"{args.key}={v}")[1] for v in args.values]
    models = {f"{args.key}={v}": AnoMemModel(base.replace(**{args.key: value})).eval()
              for v, value in zip(args.values, values)}
    first = next(iter(models.values()))
    for m in models.values():     # the same encoder in every model: only the memories differ
        m.encoder.load_state_dict(first.encoder.state_dict())
    opts = RunOptions()
    with torch.no_grad():
        times = interleaved({k: (lambda m=m: map_batches(m, x, opts, lambda n, b: n(b)))
                             for k, m in models.items()}, args.reps)
    ref = summary(next(iter(times.values())))["median_s"]
    rows = {}
    for k, m in models.items():
        s = summary(times[k])
        mem_bytes = sum(mm.patterns.numel() * mm.patterns.element_size() for mm in m.memories)
        rows[k] = {**s, "ratio_to_first": s["median_s"] / ref, "memory_bytes": mem_bytes,
                   "images_per_s": args.test / s["median_s"]}
        print(f"{k}: {args.test / s['median_s']:.0f} images/s, "
              f"{s['median_s'] / ref:.2f} x the time of the first, memories {mem_bytes / 1024:.0f} KiB")
    if args.out is not None:
        command = "python -m benchmarks.speed.growth_cost " + " ".join(argv or sys.argv[1:])
        save_json(args.out, {"command": command, "preset": args.preset, "key": args.key,
                             "test_images": args.test, "reps": args.reps, "threads": 1,
                             "machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

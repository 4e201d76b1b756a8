"""Scoring cost of the grown memories: ``consolidate_factor`` 1, 2, 4 and 8 against 1, in one process.

The network of a fit (:meth:`anomem.torch_model.AnoMemModel.build`, untrained:
weights change neither speed nor size) at each factor scores the same
``--test`` random images in batches of 256, in rotating order (``--reps``
rounds after a warm-up); the result is the median seconds per scoring, the
ratio to factor 1, and the bytes of the memories.

    python benchmarks/speed/growth_cost.py --preset cpu --out benchmarks/speed/results/growth_cost_cpu.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from anomem.config import get_config
from anomem.stages.common import RunOptions, map_batches
from anomem.torch_model import AnoMemModel

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved, machine, save_json, summary  # noqa: E402

FACTORS = (1, 2, 4, 8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = get_config(args.preset)
    x = torch.randint(0, 256, (args.test, 3, base.image_size, base.image_size), dtype=torch.uint8)
    models = {f: AnoMemModel.build(base.replace(consolidate_factor=f)).eval() for f in FACTORS}
    for f in FACTORS[1:]:     # the same encoder in every model: only the memories differ
        models[f].encoder.load_state_dict(models[1].encoder.state_dict())
    opts = RunOptions()
    with torch.no_grad():
        times = interleaved({f"x{f}": (lambda m=m: map_batches(m, x, opts, lambda n, b: n(b)))
                             for f, m in models.items()}, args.reps)
    ref = summary(times["x1"])["median_s"]
    rows = {}
    for f, m in models.items():
        s = summary(times[f"x{f}"])
        mem_bytes = sum(mm.patterns.numel() * mm.patterns.element_size() for mm in m.memories)
        rows[f"x{f}"] = {**s, "ratio_to_x1": s["median_s"] / ref, "memory_bytes": mem_bytes,
                         "images_per_s": args.test / s["median_s"]}
        print(f"consolidate_factor={f}: {args.test / s['median_s']:.0f} images/s, "
              f"{s['median_s'] / ref:.2f} x the time of factor 1, memories {mem_bytes / 1024:.0f} KiB")
    if args.out is not None:
        command = "python benchmarks/speed/growth_cost.py " + " ".join(argv or sys.argv[1:])
        save_json(args.out, {"command": command, "preset": args.preset, "test_images": args.test,
                             "reps": args.reps, "threads": 1, "machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

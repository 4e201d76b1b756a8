"""Peak resident memory of ``AnoMem.fit`` per preset and training-set size.

Each (preset, N) runs in a fresh process: N random uint8 32x32x3 images
(seed 0) go through ``AnoMem(preset, stage1_epochs=1, stage2_epochs=1,
device="cpu").fit(x)`` with the default hold-out (20 % of the images score
the threshold), one-class.  One stage-1 epoch is enough: the peak is reached
in the first steps and held from then on.  Reported: the peak resident set
(``ru_maxrss``) of the whole process, the resident set after ``import anomem``
(the floor every run pays), the number of stage-1 steps and the wall time.

    python -m benchmarks.memory.peak_rss                      # digits, cpu, mtd x 200, 5000
    python -m benchmarks.memory.peak_rss --presets cpu --sizes 5000 --set malloc_mmap_threshold=0

``--set KEY=VALUE`` (repeatable) overrides a config key of every fit, e.g.
``malloc_mmap_threshold=0`` for glibc's default heap.  ``--malloc-mmap-threshold
BYTES`` runs the workers with glibc's ``MALLOC_MMAP_THRESHOLD_`` environment
variable set (from the process start, for everything), to measure what the
allocator's retention costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]   # the repository root: workers run there as modules


def worker(preset: str, n: int, threads: int, overrides: dict[str, Any],
           candidate: str | None = None) -> dict[str, Any]:
    """One measurement in this (fresh) process.

    ``candidate`` (not in the library, see ``step_time.py``): ``trim`` calls
    glibc's ``malloc_trim(0)`` after every stage-1 step, ``checkpoint`` fits
    with the stem and first stage checkpointed.
    """
    import contextlib
    import ctypes

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import anomem
    from anomem import AnoMem

    after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    steps: list[int] = []
    trim = ctypes.CDLL(None).malloc_trim if candidate == "trim" else None

    def log(row: dict[str, Any]) -> None:
        steps.append(row["step"])
        if trim is not None and row.get("stage") == 1:
            trim(0)

    t0 = time.perf_counter()
    det = AnoMem(preset, **{"stage1_epochs": 1, "stage2_epochs": 1, "device": "cpu", **overrides})
    saver: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if candidate == "checkpoint":
        from benchmarks.memory.step_time import checkpointed_first_stage

        saver = checkpointed_first_stage()
    with saver:
        det.fit(x, log=log, progress=False)
    return {"preset": preset, "n_images": n, "image_size": det.config_.backbone.image_size,
            "stage1_steps": len(steps), "peak_rss_mb": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024), "rss_after_import_mb": round(after_import),
            "wall_s": round(time.perf_counter() - t0, 1), "torch_threads": threads,
            "overrides": overrides, "candidate": candidate,
            "malloc_mmap_threshold_config": det.config_.runtime.malloc_mmap_threshold,
            "anomem": anomem.__version__, "torch": torch.__version__}


def measure(preset: str, n: int, threads: int, mmap_threshold: int | None,
            overrides: list[str], candidate: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    sets = [arg for kv in overrides for arg in ("--set", kv)]
    sets += ["--candidate", candidate] if candidate else []
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--worker", preset, str(n), "--threads",
                          str(threads), *sets], env=env, capture_output=True, text=True, check=True,
                         cwd=ROOT)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["malloc_mmap_threshold"] = mmap_threshold
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| preset | images | input | stage-1 steps | peak RSS (MB) | RSS after import (MB) | "
             "wall (s) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['preset']}` | {r['n_images']:,} | {r['image_size']}x{r['image_size']} | "
              f"{r['stage1_steps']} | {r['peak_rss_mb']:,} | {r['rss_after_import_mb']} | "
              f"{r['wall_s']} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["digits", "cpu", "mtd"])
    p.add_argument("--sizes", nargs="+", type=int, default=[200, 5000])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--malloc-mmap-threshold", type=int, metavar="BYTES")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every fit (repeatable)")
    p.add_argument("--candidate", choices=("trim", "checkpoint"),
                   help="a memory saver not in the library (see step_time.py)")
    p.add_argument("--out", type=Path, help="JSON file for the rows (default: print only)")
    p.add_argument("--worker", nargs=2, metavar=("PRESET", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        from anomem.config import parse_override

        overrides = dict(parse_override(kv) for kv in args.set)
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.threads, overrides,
                                args.candidate)))
        return 0
    rows = []
    for preset in args.presets:
        for n in args.sizes:
            rows.append(measure(preset, n, args.threads, args.malloc_mmap_threshold, args.set,
                                args.candidate))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}")
    if args.out:
        args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                        "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

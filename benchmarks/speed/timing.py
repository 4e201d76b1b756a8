"""Timing helpers shared by the speed benchmarks: interleaved repetitions, medians, machine notes.

The CPU these benchmarks were run on is shared with other jobs, so absolute
times drift; every ratio is taken inside one process, with the variants run
in turn within each repetition (rotating which goes first) and the median of
each variant's times used.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anomem.serialization import atomic_write_text


def interleaved(variants: dict[str, Callable[[], None]], reps: int, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Seconds per call of each variant, ``reps`` rounds of one call each, order rotating.

    ``warmup`` untimed rounds come first.  A variant should synchronise the
    device itself when it runs on a GPU.
    """
    names = list(variants)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t0 = time.perf_counter()
            variants[k]()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median, quartiles and count of a list of durations (seconds)."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2], "n": len(times)}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def save_json(path: str | Path, result: dict[str, Any]) -> Path:
    """Write a benchmark result as indented JSON (atomic)."""
    return atomic_write_text(Path(path), json.dumps(result, indent=2, sort_keys=False) + "\n")

"""Stage-1 step time of a preset under each memory saver, as ratios to the default.

One stage-1 step as ``train_stage1`` takes it (two augmented views of a batch of
random uint8 images, COM-MS forward, backward, SGD step) is timed in a fresh
process per variant: the variant is set up, 3 steps warm up, then ``--steps``
steps are timed.  The variants run in turn, ``--rounds`` times; a variant's
ratio in a round is its median step time over the ``default`` process's of
the same round, so other jobs sharing the cores affect both alike.  Reported:
the median ratio over rounds, of process CPU time (user + system, which
includes the page faults) and of wall time.  A fresh process per variant
matters: glibc serves a large block from a free heap chunk whenever one fits,
so an mmap threshold set after heap-mode steps changes little.

Variants:

* ``default``: the library with ``malloc_mmap_threshold=0`` (glibc's heap);
* ``mmap16``, ``mmap8``, ``mmap4``: ``malloc_mmap_threshold`` of 16, 8, 4 MiB
  (set before the first step, as ``train_stage1`` does);
* ``trim``: glibc's ``malloc_trim(0)`` after every step (counted in the step);
* ``checkpoint``: the stem and first ResNet stage under
  ``torch.utils.checkpoint`` (recomputed in backward; BatchNorm's running
  statistics restored after the recomputation), a candidate not in the library;
* ``before``: the one-matrix NT-Xent and out-of-place residual blocks that the
  library had before the memory work (same numbers, to rounding).

    python -m benchmarks.memory.step_time --out step_time.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from anomem import backbone, heap
from anomem.augment import TwoViewAugment
from anomem.config import get_config
from anomem.losses import contrasted_memory
from anomem.stages.common import sgd_cosine
from anomem.stages.stage1 import ContrastedMemoryObjective
from anomem.torch_model import AnoMemModel
from tests.test_ntxent_chunked import plain_nt_xent  # the one copy of the formula before chunking

ROOT = Path(__file__).resolve().parents[2]   # the repository root: workers run there as modules
MIB = 1 << 20
VARIANTS = ("default", "mmap16", "mmap8", "mmap4", "trim", "checkpoint", "before")


def make_step(preset: str, n_images: int, seed: int) -> Callable[[], None]:
    """One stage-1 step of ``preset`` on random images, as ``train_stage1`` runs it."""
    cfg = get_config(preset, {"seed": seed})
    torch.manual_seed(seed)
    model = AnoMemModel(cfg).train()
    objective = ContrastedMemoryObjective(model)
    params = [*model.encoder.parameters(), *model.memories.parameters(),
              *(model.projectors.parameters() if model.projectors is not None else [])]
    opt, sched = sgd_cosine(params, cfg.stage1.lr, cfg.stage1.momentum, cfg.stage1.weight_decay,
                            10 ** 6)
    aug = TwoViewAugment.of(cfg.backbone.image_size, cfg.stage1)
    g = torch.Generator().manual_seed(seed)
    size = cfg.backbone.image_size
    images = torch.randint(0, 256, (n_images, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.ones(n_images, dtype=torch.long)

    def step() -> None:
        idx = torch.randperm(n_images, generator=g)[:cfg.stage1.batch_size]
        v1, v2 = aug(images[idx].float().div_(255))
        loss, _ = objective(v1, v2, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return step


@contextlib.contextmanager
def _buffers_kept(module: torch.nn.Module) -> Iterator[None]:
    """Restore ``module``'s buffers (BatchNorm running statistics) on exit."""
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


@contextlib.contextmanager
def checkpointed_first_stage() -> Iterator[None]:
    """``ResNet.forward`` with the stem and first stage checkpointed while training with gradients."""
    original = backbone.ResNet.forward

    def forward(self: backbone.ResNet, x: torch.Tensor, upto: int = 4) -> list[torch.Tensor]:
        def first(t: torch.Tensor) -> torch.Tensor:
            return self.stages[0](self.stem(t))
        if self.training and torch.is_grad_enabled():
            z = checkpoint(first, x, use_reentrant=False,
                           context_fn=lambda: (contextlib.nullcontext(), _buffers_kept(self)))
        else:
            z = first(x)
        out = [z]
        for stage in self.stages[1:upto]:
            z = stage(z)
            out.append(z)
        return out

    backbone.ResNet.forward = forward
    try:
        yield
    finally:
        backbone.ResNet.forward = original


def _out_of_place_block(self: backbone.BasicBlock, x: torch.Tensor) -> torch.Tensor:
    out = torch.relu(self.bn1(self.conv1(x)))
    return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@contextlib.contextmanager
def before_memory_work() -> Iterator[None]:
    """The plain NT-Xent and the out-of-place basic block, patched in."""
    saved = contrasted_memory.nt_xent, backbone.BasicBlock.forward
    contrasted_memory.nt_xent, backbone.BasicBlock.forward = plain_nt_xent, _out_of_place_block
    try:
        yield
    finally:
        contrasted_memory.nt_xent, backbone.BasicBlock.forward = saved


def variant_context(name: str) -> contextlib.AbstractContextManager[Any]:
    if name.startswith("mmap"):
        return heap.large_blocks_mmapped(int(name[4:]) * MIB)
    return {"checkpoint": checkpointed_first_stage, "before": before_memory_work}.get(
        name, contextlib.nullcontext)()


def worker(preset: str, variant: str, steps: int, images: int, threads: int) -> dict[str, Any]:
    """Time ``steps`` stage-1 steps under ``variant`` in this (fresh) process."""
    torch.set_num_threads(threads)
    trim = ctypes.CDLL(None).malloc_trim if variant == "trim" else None
    step = make_step(preset, images, 0)
    cpu, wall = [], []
    with variant_context(variant):
        for i in range(steps + 3):
            c0, w0 = time.process_time(), time.perf_counter()
            step()
            if trim is not None:
                trim(0)
            if i >= 3:
                cpu.append(round(time.process_time() - c0, 4))
                wall.append(round(time.perf_counter() - w0, 4))
    return {"variant": variant, "cpu": cpu, "wall": wall}


def run_worker(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", __spec__.name, "--worker", variant, "--preset", args.preset, "--steps",
           str(args.steps), "--images", str(args.images), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per variant: median step times and the median over rounds of the ratio to ``default``."""
    rows = []
    for v, blocks in runs.items():
        row: dict[str, Any] = {"variant": v}
        for key in ("cpu", "wall"):
            med = [statistics.median(b[key]) for b in blocks]
            ref = [statistics.median(b[key]) for b in runs["default"]]
            row[f"{key}_s_per_step"] = round(statistics.median(med), 3)
            row[f"{key}_ratio"] = round(statistics.median(m / r for m, r in zip(med, ref)), 3)
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=8, help="timed steps per process (default: 8)")
    p.add_argument("--rounds", type=int, default=3, help="processes per variant (default: 3)")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="JSON file for the results (default: print only)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.preset, args.worker, args.steps, args.images, args.threads)))
        return 0
    glibc = heap._glibc_mallopt() is not None
    names = ["default"] + [v for v in args.variants if v != "default"
                           and (glibc or not (v.startswith("mmap") or v == "trim"))]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    for r in range(args.rounds):
        for v in names:
            runs[v].append(run_worker(args, v))
            print(f"round {r + 1} {v}: cpu {statistics.median(runs[v][-1]['cpu']):.3f} s/step",
                  file=sys.stderr, flush=True)
    rows = summarise(runs)
    print("| variant | CPU s/step | wall s/step | CPU ratio | wall ratio |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| `{row['variant']}` | {row['cpu_s_per_step']} | {row['wall_s_per_step']} | "
              f"{row['cpu_ratio']:.2f} | {row['wall_ratio']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({
            "preset": args.preset, "images": args.images, "timed_steps": args.steps,
            "rounds": args.rounds, "threads": args.threads, "machine": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "rows": rows, "runs": runs},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is the data pipeline ever the bottleneck?  Stage-1 steps/s from JPEG files vs in-memory tensors.

The first ``--files`` CIFAR-10 training JPEGs are written to a temporary
folder as files.  Two sources feed the same stage-1 step (``cpu`` preset:
uint8 batch -> float, two-view augmentation, COM-MS forward, backward, SGD):

* ``memory``: the images decoded once into a uint8 tensor, a batch = an
  indexed slice (what :func:`anomem.stages.stage1.train_stage1` does);
* ``jpeg``: a :class:`torch.utils.data.DataLoader` over the files
  (``--workers`` worker processes, shuffled), each file decoded by
  :func:`anomem.data.folders.read_image` when its batch is drawn.

Sources alternate in blocks of ``--block`` steps; the ratio of median
seconds per step is reported, together with the loader's own throughput
(batches drawn with no training) against the training's consumption.

    python -m benchmarks.speed.data_pipeline
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from anomem.augment import TwoViewAugment
from anomem.config import get_config, parse_override, to_dict
from anomem.data.folders import read_image
from anomem.data.locate import CIFAR10_JPEG, data_file
from anomem.serialization import atomic_write_bytes
from anomem.stages.common import sgd_cosine
from anomem.stages.stage1 import ContrastedMemoryObjective
from anomem.torch_model import AnoMemModel
from benchmarks.speed.timing import machine, save_json, summary

HERE = Path(__file__).parent


class JpegFiles(Dataset):
    """Image files decoded on access to uint8 (3, H, W)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(read_image(self.paths[i])).permute(2, 0, 1).contiguous()


def extract(n: int, folder: Path) -> list[Path]:
    """Write the first ``n`` training JPEGs of the shared CIFAR-10 archive as files."""
    paths = []
    with tarfile.open(data_file(CIFAR10_JPEG)) as tf:
        for m in tf:
            if m.isfile() and m.name.strip("./").startswith("train/") and len(paths) < n:
                f = tf.extractfile(m)
                if f is not None:
                    paths.append(atomic_write_bytes(folder / m.name.strip("./").replace("/", "_"),
                                                    f.read()))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--files", type=int, default=2048)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--block", type=int, default=3, help="steps per block")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "data_pipeline.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = get_config(args.config, dict(parse_override(o) for o in args.overrides))
    with tempfile.TemporaryDirectory() as tmp:
        paths = extract(args.files, Path(tmp))
        data = JpegFiles(paths)
        memory = torch.stack([data[i] for i in range(len(data))])
        loader = DataLoader(data, batch_size=cfg.stage1.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.workers, persistent_workers=args.workers > 0)
        torch.manual_seed(cfg.runtime.seed)
        model = AnoMemModel(cfg).train()
        objective = ContrastedMemoryObjective(model)
        opt, _ = sgd_cosine(list(model.parameters()), cfg.stage1.lr, cfg.stage1.momentum,
                            cfg.stage1.weight_decay, 10_000)
        aug = TwoViewAugment.of(cfg.backbone.image_size, cfg.stage1)
        y = torch.ones(cfg.stage1.batch_size)

        def train_on(batch: torch.Tensor) -> None:
            v1, v2 = aug(batch.float().div_(255))
            loss, _ = objective(v1, v2, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def batches_from_loader() -> Any:
            while True:
                yield from loader

        jpeg_iter = batches_from_loader()
        times: dict[str, list[float]] = {"memory": [], "jpeg": []}
        g = torch.Generator().manual_seed(0)
        for block in range(args.blocks + 1):                  # block 0 warms both sources up
            for source in (("memory", "jpeg") if block % 2 == 0 else ("jpeg", "memory")):
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    if source == "memory":
                        batch = memory[torch.randperm(len(memory), generator=g)[:cfg.stage1.batch_size]]
                    else:
                        batch = next(jpeg_iter)
                    train_on(batch)
                    if block > 0:
                        times[source].append(time.perf_counter() - t0)
        t0, n_drawn = time.perf_counter(), 0
        for batch in loader:
            n_drawn += len(batch)
        loader_ips = n_drawn / (time.perf_counter() - t0)
    stats = {k: summary(t) for k, t in times.items()}
    train_ips = cfg.stage1.batch_size / stats["memory"]["median_s"]
    result = {"command": "python -m benchmarks.speed.data_pipeline " + " ".join(argv or sys.argv[1:]),
              "config": to_dict(cfg), "files": len(paths), "loader_workers": args.workers,
              "machine": machine(), "step_seconds": stats,
              "steps_per_s": {k: 1 / s["median_s"] for k, s in stats.items()},
              "ratio_jpeg_over_memory_steps_per_s": stats["memory"]["median_s"] / stats["jpeg"]["median_s"],
              "loader_alone_images_per_s": loader_ips, "training_images_per_s": train_ips,
              "loader_headroom": loader_ips / train_ips}
    save_json(args.out, result)
    print({k: v for k, v in result.items() if k not in ("config", "machine", "step_seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One command, one GPU: the `paper` preset on one CIFAR-10 class, timed, with the AUROC reached.

    python benchmarks/gpu/train_paper_one_class.py                 # class 0, 300 steps, bf16 + NHWC

Trains stage 1 of the ``paper`` preset (ResNet-50, memories after stages 3
and 4 with 512 / 256 patterns, batch 1024, the paper's recipe: beta 2, raw
features, Eq. 1 until it converges; ``--preset gpu``: the same network with
the tuned recipe, beta 20) on the 5,000
training images of one CIFAR-10 class for a fixed number of steps (rounded up
to whole epochs), through :class:`anomem.AnoMem` exactly as a user would,
then scores the 10,000 test images (one-vs-all, gamma = 0).  Prints and
writes (``--out``, JSON):

* training images/s (stage 1, from the per-step log) and wall times;
* a step-time breakdown measured on ``--breakdown-steps`` separate steps of a
  fresh model with a device synchronisation between phases: batch to device,
  two-view augmentation, encoder forward, memory + losses forward (objective
  forward minus a bare encoder forward on the same batch), backward,
  optimiser step;
* peak GPU memory (``torch.cuda.max_memory_allocated``) of training and scoring;
* the test AUROC.

``--set key=value`` changes the configuration (``--set amp=false`` etc.);
``--limit-train`` / ``--limit-test`` only exist to smoke-test the script on a
CPU with a tiny override, e.g.::

    python benchmarks/gpu/train_paper_one_class.py --steps 2 --breakdown-steps 1 \\
        --set arch=resnet18 --set width=4 --set batch_size=32 --set mem_sizes=[16,8] \\
        --limit-train 64 --limit-test 200 --out gpu_smoke.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem import AnoMem, __version__
from anomem.augment import TwoViewAugment
from anomem.config import get_config, parse_override, to_dict
from anomem.data.cifar import cached_cifar10_jpeg
from anomem.data.locate import CIFAR10_JPEG, data_file
from anomem.protocols.one_vs_all import auroc, make_one_vs_all
from anomem.serialization import atomic_write_text
from anomem.stages.common import sgd_cosine
from anomem.stages.stage1 import ContrastedMemoryObjective
from anomem.torch_model import AnoMemModel

HERE = Path(__file__).parent


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def breakdown(cfg: Any, images: torch.Tensor, device: torch.device, steps: int) -> dict[str, float]:
    """Median milliseconds of each phase of a stage-1 step (first step is warm-up)."""
    torch.manual_seed(cfg.runtime.seed)
    model = AnoMemModel(cfg).to(device).train()
    objective = ContrastedMemoryObjective(model)
    opt, _ = sgd_cosine(list(model.parameters()), cfg.stage1.lr, cfg.stage1.momentum,
                        cfg.stage1.weight_decay, 1000)
    aug = TwoViewAugment.of(cfg.backbone.image_size, cfg.stage1)
    y = torch.ones(min(cfg.stage1.batch_size, len(images)), device=device)
    amp = cfg.runtime.amp and device.type == "cuda"
    phases: dict[str, list[float]] = {k: [] for k in ("to_device", "augment", "encoder_forward",
                                                      "memory_and_loss_forward", "backward",
                                                      "optimizer")}
    def mark(t: list[float]) -> None:
        _sync(device)
        t.append(time.perf_counter())

    for step in range(steps + 1):
        t = [time.perf_counter()]
        idx = torch.randperm(len(images))[:len(y)]
        x = images[idx].to(device, non_blocking=True).float().div_(255)
        mark(t)
        v1, v2 = aug(x)
        mark(t)
        both = torch.cat([v1, v2])
        if cfg.runtime.channels_last and device.type == "cuda":
            both = both.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            model.features(both)
        mark(t)
        loss, _ = objective(v1, v2, y)
        mark(t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mark(t)
        opt.step()
        mark(t)
        if step == 0:
            continue
        d = np.diff(t) * 1000
        phases["to_device"].append(d[0])
        phases["augment"].append(d[1])
        phases["encoder_forward"].append(d[2])
        phases["memory_and_loss_forward"].append(max(d[3] - d[2], 0.0))
        phases["backward"].append(d[4])
        phases["optimizer"].append(d[5])
    out = {k: statistics.median(v) for k, v in phases.items()}
    out["step_total_without_duplicate_encoder"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--class", dest="cls", type=int, default=0, help="normal CIFAR-10 class")
    p.add_argument("--preset", choices=("paper", "gpu"), default="paper",
                   help="paper: the paper read literally (recipe=paper); gpu: the same network and "
                        "budget with the tuned recipe (beta 20)")
    p.add_argument("--steps", type=int, default=300, help="stage-1 steps (rounded up to whole epochs)")
    p.add_argument("--breakdown-steps", type=int, default=10)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--limit-train", type=int, help="CPU smoke test only: first N training images")
    p.add_argument("--limit-test", type=int, help="CPU smoke test only: N test images, evenly spaced")
    p.add_argument("--out", default=str(HERE / "results" / "train_paper_one_class.json"))
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    task = make_one_vs_all(cached_cifar10_jpeg(data_file(CIFAR10_JPEG)), args.cls, 0.0, 0)
    x_train, x_test, truth = task.x_train, task.x_test, task.labels_test
    if args.limit_train:
        x_train = x_train[:args.limit_train]
    if args.limit_test:                     # every k-th test image: all classes stay present
        sel = np.linspace(0, len(x_test) - 1, args.limit_test).astype(np.int64)
        x_test, truth = x_test[sel], truth[sel]
    overrides = {"amp": True, "channels_last": True, "device": device.type,
                 **dict(parse_override(o) for o in args.overrides)}
    cfg = get_config(args.preset, overrides)
    per_epoch = max(1, len(x_train) // min(cfg.stage1.batch_size, len(x_train)))
    cfg = cfg.replace(stage1_epochs=math.ceil(args.steps / per_epoch))
    steps = cfg.stage1.epochs * per_epoch
    load_s = time.perf_counter() - t_start

    det = AnoMem(cfg)
    train_u8 = torch.as_tensor(x_train).permute(0, 3, 1, 2).contiguous()
    parts = breakdown(cfg, train_u8, device, args.breakdown_steps)
    rows: list[dict[str, Any]] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    det.fit(x_train, progress=True, log=rows.append, validation_fraction=0.0)
    fit_s = time.perf_counter() - t0
    train_peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    scores = det.decision_function(x_test)
    _sync(device)
    score_s = time.perf_counter() - t0
    score_peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    stage1 = [r for r in rows if r.get("stage") == 1]
    result = {
        "command": "python benchmarks/gpu/train_paper_one_class.py " + " ".join(argv or sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "anomem": __version__, "config": to_dict(cfg),
        "normal_class": args.cls, "train_images": len(x_train), "test_images": len(x_test),
        "stage1_steps": steps, "stage1_images_per_s": stage1[-1]["images_per_s"] if stage1 else None,
        "final_loss": stage1[-1]["loss"] if stage1 else None,
        "step_breakdown_ms": parts, "peak_gpu_memory_gib": {"train": train_peak, "score": score_peak},
        "scoring_images_per_s": len(x_test) / score_s,
        "wall_s": {"data": load_s, "fit": fit_s, "score": score_s,
                   "total": time.perf_counter() - t_start},
        "test_auroc": auroc(np.asarray(truth), scores)}
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

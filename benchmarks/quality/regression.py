"""Quality regression check: refit digits and two CIFAR-10 classes, compare with the committed means.

    python benchmarks/quality/regression.py                    # every check, exit 1 on a fall
    python benchmarks/quality/regression.py --only digits_oc digits_ss
    python benchmarks/quality/regression.py --write-baseline   # after a change is accepted
    python benchmarks/quality/regression.py --set extensions.reseed_dead=false   # a candidate default
    python benchmarks/quality/regression.py --members 1        # one network per fit instead of auto

Run it before changing any default.  Each check refits 3 seeds and takes the
mean over seeds of the per-seed mean AUROC over its classes:

* ``digits_oc`` / ``digits_ss``: scikit-learn's digits, every class, one-class
  and gamma = 0.05, the ``digits`` preset (the protocol of ``anomem demo``,
  :func:`anomem.cli.demo.run_cell`);
* ``cifar_oc``: CIFAR-10 classes 0 and 1 at the grid budget (``cpu`` preset,
  3 stage-1 epochs, 1,000 training and 200 test images per class), one-class
  (``ANOMEM_DATA`` must hold ``cifar10_jpeg.tar.gz``).

A check fails when its mean falls more than 2 standard deviations (over
seeds, of the baseline) below the baseline's mean, kept in
``regression_baseline.json`` beside this file with the command, commit and
machine that produced it.  One thread, as the baselines were measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem.config import parse_override
from anomem.ensemble import parse_members
from anomem.serialization import atomic_write_text

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "regression_baseline.json"
SEEDS = (0, 1, 2)
CHECKS = ("digits_oc", "digits_ss", "cifar_oc")


def digits_means(gamma: float, overrides: dict[str, Any], members: int | str = "auto") -> list[float]:
    """Per seed, the mean AUROC (%) over the ten digit classes."""
    from anomem.cli.demo import run_cell
    key = f"gamma={gamma:g}"
    return [100 * float(np.mean([run_cell(c, s, [gamma], overrides, members=members)[key]
                                 for c in range(10)])) for s in SEEDS]


def cifar_means(overrides: dict[str, Any], members: int | str = "auto",
                classes: tuple[int, ...] = (0, 1)) -> list[float]:
    """Per seed, the mean one-class AUROC (%) over ``classes`` at the grid budget."""
    from anomem.ensemble import make_detector
    from anomem.protocols.one_vs_all import auroc, make_one_vs_all
    from anomem.protocols.runner import load_dataset, subsample
    _, split = load_dataset("cifar10_jpeg")
    split = subsample(split, 1000, 200, 0)
    out = []
    for s in SEEDS:
        scores = []
        for c in classes:
            task = make_one_vs_all(split, c, 0.0, s)
            kw = {"seed": s, "stage1_epochs": 3, **overrides}
            det = make_detector("cpu", members, len(task.x_train), **kw)
            det.fit(task.x_train, validation_fraction=0.0, progress=False)
            scores.append(auroc(task.labels_test, det.decision_function(task.x_test)))
        out.append(100 * float(np.mean(scores)))
    return out


RUN = {"digits_oc": lambda o, k: digits_means(0.0, o, k), "digits_ss": lambda o, k: digits_means(0.05, o, k),
       "cifar_oc": cifar_means}


def verdict(name: str, per_seed: list[float], base: dict) -> tuple[bool, str]:
    """Whether ``per_seed``'s mean stays within 2 baseline standard deviations of its mean."""
    mean, floor = float(np.mean(per_seed)), base["mean"] - 2 * base["std"]
    ok = mean >= floor
    return ok, (f"{name}: {mean:.2f} (seeds {', '.join(f'{v:.2f}' for v in per_seed)}) against "
                f"{base['mean']:.2f} ± {base['std']:.2f}, floor {floor:.2f}: "
                f"{'ok' if ok else 'FELL'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS))
    p.add_argument("--write-baseline", action="store_true",
                   help="compare, then store this run's means as the new baseline (after a change "
                        "of default is accepted)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="refit with a candidate default (compared with the same baseline)")
    p.add_argument("--members", type=parse_members, default="auto", metavar="K|auto",
                   help="networks per fit, as anomem fit --members (default: auto; another value is "
                        "compared with the same baseline)")
    args = p.parse_args(argv)
    overrides = dict(parse_override(o) for o in args.set)
    if (overrides or args.members != "auto") and args.write_baseline:
        p.error("--write-baseline stores the defaults' means: change the default, then run it "
                "without --set")
    torch.set_num_threads(1)
    baseline = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
    failed = False
    for name in args.only:
        t0 = time.time()
        per_seed = RUN[name](overrides, args.members)
        if name in baseline:
            ok, line = verdict(name, per_seed, baseline[name])
            print(line + f" ({time.time() - t0:.0f} s)", flush=True)
            failed |= not ok and not args.write_baseline
        if args.write_baseline:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, cwd=HERE).stdout.strip()
            baseline[name] = {"mean": round(float(np.mean(per_seed)), 2),
                              "std": round(float(np.std(per_seed)), 2), "per_seed": per_seed,
                              "command": f"python benchmarks/quality/regression.py --only {name} "
                                         f"--write-baseline", "commit": commit,
                              "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
                              "wall_s": round(time.time() - t0)}
            atomic_write_text(BASELINE, json.dumps(baseline, indent=2) + "\n")   # check by check
            print(f"{name}: baseline {baseline[name]['mean']} ± {baseline[name]['std']}", flush=True)
            continue
        if name not in baseline:
            print(f"{name}: no baseline in {BASELINE.name}; run with --write-baseline", flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

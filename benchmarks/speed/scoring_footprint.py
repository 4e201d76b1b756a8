"""Scoring throughput and peak memory: AnoMem's fixed memory vs a kNN bank, as the training set grows.

One AnoMem detector (`cpu` preset, briefly trained: ``--epochs`` stage-1
epochs on the first 1,000 CIFAR-10 training images; weights do not change
speed or size) scores ``--test`` CIFAR-10 test images.  The kNN detector
(:class:`anomem.baselines.knn.KNNDetector`, k = 2) uses *the same encoder*:
its bank is the pooled, normalised stage-3/4 features of the first N CIFAR-10
training images (all classes), N = 1k ... 50k.  AnoMem's state is N_mem
prototypes per scale whatever N.

Each (N, method) runs in a fresh process.  Memory: the growth of the resident
set while the scorer's state is put in place and the test set scored (Linux
peak-RSS counter reset just before; "state" = the kNN bank, AnoMem has
nothing to add) over the resident set after one warm-up scoring of the test
set by AnoMem (so the encoder's own working memory is already counted), the
whole peak resident set, and the exact bytes of the stored state.  Throughput: in
the kNN processes, AnoMem and kNN score the test set in alternation
(``--reps`` each), median images/s and their ratio.

    python -m benchmarks.speed.scoring_footprint
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from anomem.baselines.common import embed
from anomem.baselines.knn import KNNDetector, _PooledScales
from anomem.config import to_dict
from anomem.data.cifar import cached_cifar10_jpeg
from anomem.data.locate import CIFAR10_JPEG, data_file
from anomem.detector import AnoMem
from anomem.serialization import atomic_torch_save, safe_torch_load
from benchmarks.speed.timing import interleaved, machine, save_json, summary

HERE = Path(__file__).parent
ROOT = HERE.resolve().parents[1]   # the repository root: workers run there as modules
SIZES = (1000, 2000, 5000, 10000, 20000, 50000)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def worker(work: Path, n: int, method: str, reps: int) -> dict[str, Any]:
    """One fresh process: the scorer's memory growth, and (kNN) the interleaved timing."""
    torch.set_num_threads(1)
    det = AnoMem.load(work / "anomem.model", device="cpu")
    x_test = safe_torch_load(work / "test.pt", "test images")["x"]
    knn = KNNDetector(det.config_, k=2, encoder=det)
    knn._net = _PooledScales(det.network)
    det.decision_function(x_test)           # the encoder's working memory is in place for both
    before = _rss_kb("VmRSS")
    _reset_peak()
    if method == "knn":
        knn.bank_ = safe_torch_load(work / "bank.pt", "bank")["bank"][:n].clone()
        knn.decision_function(x_test)
        state = knn.bank_.numel() * knn.bank_.element_size()
    else:
        det.decision_function(x_test)
        state = sum(p.numel() * p.element_size() for p in det.network.memories.parameters())
    out: dict[str, Any] = {"n_train": n, "method": method, "state_bytes": state,
                           "peak_rss_mb": _rss_kb("VmHWM") / 1024,
                           "peak_growth_mb": (_rss_kb("VmHWM") - before) / 1024}
    if method == "knn":
        times = interleaved({"anomem": lambda: det.decision_function(x_test),
                             "knn": lambda: knn.decision_function(x_test)}, reps)
        for k, t in times.items():
            out[f"{k}_images_per_s"] = len(x_test) / summary(t)["median_s"]
    return out


def prepare(work: Path, epochs: int, n_test: int, n_bank: int) -> dict[str, Any]:
    """Train the AnoMem detector briefly, embed the first ``n_bank`` training images once."""
    torch.set_num_threads(2)
    split = cached_cifar10_jpeg(data_file(CIFAR10_JPEG))
    det = AnoMem("cpu", stage1_epochs=epochs, device="cpu").fit(split.x_train[:1000],
                                                                validation_fraction=0.0)
    det.save(work / "anomem.model")
    net = _PooledScales(det.network)
    bank = embed(net, split.x_train[:n_bank], det.config_)
    check = KNNDetector(det.config_, k=2, encoder=det).fit(split.x_train[:1000])
    assert torch.allclose(check.bank_, bank[:1000], atol=1e-5), "bank slices differ from fit()"
    atomic_torch_save({"bank": bank}, work / "bank.pt")
    x_test = torch.as_tensor(split.x_test[:n_test]).permute(0, 3, 1, 2).contiguous()
    atomic_torch_save({"x": x_test}, work / "test.pt")
    return {"config": to_dict(det.config_), "bank_dim": bank.shape[1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1, help="stage-1 epochs of the AnoMem detector")
    p.add_argument("--test", type=int, default=1000, help="test images scored")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="training-set sizes")
    p.add_argument("--out", default=str(HERE / "results" / "scoring_footprint.json"))
    p.add_argument("--worker", nargs=3, metavar=("WORKDIR", "N", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), int(args.worker[1]), args.worker[2], args.reps)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = prepare(work, args.epochs, args.test, max(args.sizes))
        rows = []
        for n in args.sizes:
            for method in ("anomem", "knn"):
                res = subprocess.run([sys.executable, "-m", __spec__.name, "--reps", str(args.reps),
                                      "--worker", str(work), str(n), method],
                                     capture_output=True, text=True, cwd=ROOT)
                if res.returncode:
                    raise RuntimeError(f"worker {n} {method} failed:\n{res.stderr}")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    result = {"command": "python -m benchmarks.speed.scoring_footprint " + " ".join(argv or sys.argv[1:]),
              "encoder": f"cpu preset, stage 1 trained {args.epochs} epoch(s) on CIFAR-10 train 0..999",
              "test_images": args.test, "reps": args.reps, "threads": 1, "machine": machine(),
              **info, "rows": rows}
    save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A training job for tests/test_resume.py, run as a subprocess so that it can be SIGKILLed.

``python tests/resume_job.py OUT_DIR CHECKPOINT_DIR`` fits a semi-supervised
AnoMem on scikit-learn's digits (normal class 0, a few labelled anomalies),
checkpointing every 3 steps (mid-epoch: 2 steps per epoch).  After every step
it rewrites ``OUT_DIR/steps.json`` (the steps this process ran, per stage); at
the end it writes ``scores.npy`` (scores of a fixed test set) and
``history.json`` (both stages' epoch statistics).  With ``HOLD=STAGE:STEP`` in
the environment it stops (sleeps) after that step, so that a test can kill it
at a known point; the ``log`` hook that does this never changes what is
computed.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anomem import AnoMem
from anomem.data.digits import load_digits_split
from anomem.protocols.one_vs_all import make_one_vs_all
from anomem.serialization import atomic_write_bytes, atomic_write_text
from anomem.stages.common import RunOptions

CONFIG = {"stage1_epochs": 4, "stage2_epochs": 6, "seed": 3}
CHECKPOINT_EVERY = 3
HOLD_S = 600


def main(out: Path, checkpoint_dir: Path) -> None:
    torch.set_num_threads(1)
    task = make_one_vs_all(load_digits_split(seed=0), normal_class=0, gamma=0.1, seed=0)
    x, labels = task.x_train[-90:], task.labels_train[-90:]   # 78 normals, 12 anomalies
    steps: dict[str, list[int]] = {"1": [], "2": []}
    hold = os.environ.get("HOLD")

    def log(metrics: dict) -> None:
        steps[str(metrics["stage"])].append(int(metrics["step"]))
        atomic_write_text(out / "steps.json", json.dumps(steps))
        if hold == f"{metrics['stage']}:{metrics['step']}":
            time.sleep(HOLD_S)

    opts = RunOptions(device=torch.device("cpu"), checkpoint_every=CHECKPOINT_EVERY, log=log)
    det = AnoMem("digits", **CONFIG).fit(x, labels, checkpoint_dir=checkpoint_dir, options=opts)
    buf = io.BytesIO()
    np.save(buf, det.decision_function(task.x_test[:60]))
    atomic_write_bytes(out / "scores.npy", buf.getvalue())
    hist = {stage: [{k: v for k, v in h.items() if k != "images_per_s"} for h in rows]
            for stage, rows in det.history_.items()}
    atomic_write_text(out / "history.json", json.dumps(hist))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

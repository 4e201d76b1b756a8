"""A training run SIGKILLed mid-stage-1 and again mid-stage-2, then resumed, ends
with exactly the scores and epoch statistics of an uninterrupted run (CPU).

The job is ``tests/resume_job.py`` (semi-supervised digits, checkpoints every 3
steps, i.e. mid-epoch, so the accumulated epoch statistics must travel in the
checkpoint too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from anomem import AnoMem, ModelFileError
from anomem.serialization import safe_torch_load

JOB = Path(__file__).with_name("resume_job.py")
STAGE1_STEPS, STAGE2_STEPS = 8, 12   # 4 and 6 epochs of 2 steps (90 images, batch 32)


def start(out: Path, ckpt: Path, hold: str = "") -> subprocess.Popen:
    """Start the job; with ``hold="S:N"`` it stops after step N of stage S (the step after
    a checkpoint, which is written after the ``log`` hook of its own step)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOLD": hold}
    return subprocess.Popen([sys.executable, str(JOB), str(out), str(ckpt)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(proc: subprocess.Popen, path: Path, timeout_s: float = 120.0) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (polling every 10 ms)."""
    end = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"job ended (rc {proc.returncode}) before {path.name} appeared: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"{path.name} did not appear within {timeout_s} s")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]


def step_of(path: Path) -> int:
    return int(safe_torch_load(path, "checkpoint")["step"])


def steps_run(out: Path) -> dict[str, list[int]]:
    return json.loads((out / "steps.json").read_text())


@pytest.mark.slow
def test_sigkill_in_both_stages_then_resume_gives_identical_scores(tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ckpt = tmp_path / "ckpt"
    ref = start(ref_out, tmp_path / "ref_ckpt")          # uninterrupted, runs alongside
    first = start(out / "a", ckpt, hold="1:4")            # killed in stage 1, mid-epoch 2
    kill_when(first, ckpt / "stage1.ckpt")
    killed_at_1 = step_of(ckpt / "stage1.ckpt")
    assert killed_at_1 == 3 < STAGE1_STEPS and not (ckpt / "stage2.ckpt").exists()
    assert steps_run(out / "a")["1"] in ([1, 2, 3], [1, 2, 3, 4])   # killed in step 4 or its hold

    second = start(out / "b", ckpt, hold="2:4")           # resumes stage 1, killed in stage 2
    kill_when(second, ckpt / "stage2.ckpt")
    killed_at_2 = step_of(ckpt / "stage2.ckpt")
    assert killed_at_2 == 3 < STAGE2_STEPS and step_of(ckpt / "stage1.ckpt") == STAGE1_STEPS
    ran = steps_run(out / "b")
    assert ran["1"] == list(range(4, STAGE1_STEPS + 1)) and ran["2"] in ([1, 2, 3], [1, 2, 3, 4])

    third = start(out / "c", ckpt)                        # resumes stage 2 to the end
    finish(third)
    finish(ref)
    assert steps_run(out / "c") == {"1": [], "2": list(range(killed_at_2 + 1, STAGE2_STEPS + 1))}
    resumed, uninterrupted = np.load(out / "c" / "scores.npy"), np.load(ref_out / "scores.npy")
    assert np.isfinite(resumed).all() and resumed.std() > 0
    np.testing.assert_array_equal(resumed, uninterrupted)
    assert json.loads((out / "c" / "history.json").read_text()) == \
        json.loads((ref_out / "history.json").read_text())


def test_a_checkpoint_resumes_on_another_device_setting(digits, tmp_path):
    # device, amp and channels_last say where a run goes, not what it computes: a run
    # checkpointed with device="cpu" resumes under "auto" (and amp on a CPU is ignored).
    x = digits.x_train[digits.y_train == 3][:40]
    first = AnoMem("digits", stage1_epochs=1, device="cpu").fit(
        x, checkpoint_dir=tmp_path, validation_fraction=0.0)
    again = AnoMem("digits", stage1_epochs=1, device="auto", amp=True).fit(
        x, checkpoint_dir=tmp_path, validation_fraction=0.0)
    np.testing.assert_array_equal(first.decision_function(x), again.decision_function(x))
    with pytest.raises(ModelFileError, match="belongs to another run"):
        AnoMem("digits", stage1_epochs=1, beta=3.0).fit(x, checkpoint_dir=tmp_path,
                                                         validation_fraction=0.0)

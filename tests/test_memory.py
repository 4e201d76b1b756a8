"""Memory of a fit: image conversion in bounded chunks, the training-set digest without a copy,
and the peak-RSS benchmark script (``python -m benchmarks.memory.peak_rss``)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from anomem.data.convert import CONVERT_CHUNK, to_image_tensor
from anomem.detector import data_digest

ROOT = Path(__file__).resolve().parents[1]


def test_chunked_conversion_gives_each_image_what_it_gets_alone():
    rng = np.random.default_rng(0)
    n = CONVERT_CHUNK + 7
    for images, size in ((rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8), 20),
                         (rng.random((n, 1, 9, 9)), 16),
                         (rng.random((n, 16, 16)).astype(np.float32), 16)):
        batch = to_image_tensor(images, size)
        alone = torch.cat([to_image_tensor(im[None], size) for im in images])
        assert batch.dtype == torch.uint8 and batch.shape == (n, 3, size, size)
        assert torch.equal(batch, alone)
    ready = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    assert to_image_tensor(ready, 8) is ready                 # nothing to convert: no copy


def test_training_set_digest_is_unchanged_so_old_checkpoints_still_resume():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.rand(50)
    h = hashlib.blake2b(digest_size=16)
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    assert data_digest(x, y) == h.hexdigest()


def test_peak_rss_benchmark_runs_and_reports_the_peak(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.memory.peak_rss", "--presets",
                        "digits", "--sizes", "40", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["preset"] == "digits" and row["n_images"] == 40 and row["stage1_steps"] == 1
    assert row["peak_rss_mb"] > row["rss_after_import_mb"] > 0
    assert "| `digits` | 40 | 16x16 | 1 |" in r.stdout

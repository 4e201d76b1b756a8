"""Loading never executes code from a file: crafted model and checkpoint files whose
pickle runs ``open(marker, "w")`` on unpickling are refused with ModelFileError,
and the marker file never appears.

Each payload is first shown to be live: plain ``pickle.loads`` of the same bytes
does create its marker.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anomem import AnoMem, ModelFileError
from anomem.detector import MODEL_FORMAT, MODEL_VERSION
from anomem.stages.common import CHECKPOINT_VERSION


class Payload:
    """Unpickling this calls ``open(marker, "w")``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def model_blob(marker: Path) -> dict[str, Any]:
    return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": {}, "kmeans": False,
            "semi_supervised": False, "threshold": 0.0, "state_dict": {"w": Payload(marker)}}


def checkpoint_blob(marker: Path) -> dict[str, Any]:
    return {"format": "anomem-checkpoint", "version": CHECKPOINT_VERSION, "step": 1,
            "fingerprint": {}, "rng": Payload(marker), "state": {}, "extra": {}}


def torch_zip(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)            # the zip format torch writes; its data.pkl holds the payload
    return buf.getvalue()


def raw_pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=2)


def embedded_pickle(data: bytes) -> bytes:
    """The pickle inside a torch zip file (the bytes torch.load would unpickle)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


ENCODINGS = {"torch-zip": (torch_zip, embedded_pickle), "raw-pickle": (raw_pickle, lambda b: b)}


@pytest.fixture(params=sorted(ENCODINGS))
def encode(request, tmp_path):
    """Encodes a blob as a file's bytes, after checking its payload really runs."""
    dump, inner = ENCODINGS[request.param]

    def run(make_blob: Any, marker: Path) -> bytes:
        probe = tmp_path / "probe_marker"
        pickle.loads(inner(dump(make_blob(probe))))
        assert probe.exists(), "the payload must be live, or this test proves nothing"
        return dump(make_blob(marker))
    return run


def test_model_file_with_pickle_payload_is_refused(encode, tmp_path):
    marker = tmp_path / "pwned_by_model"
    path = tmp_path / "evil.anomem"
    path.write_bytes(encode(model_blob, marker))
    with pytest.raises(ModelFileError, match="cannot be loaded safely"):
        AnoMem.load(path)
    assert not marker.exists()


def test_checkpoint_with_pickle_payload_is_refused_on_resume(encode, tmp_path):
    marker = tmp_path / "pwned_by_checkpoint"
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "stage1.ckpt").write_bytes(encode(checkpoint_blob, marker))
    images = np.random.default_rng(0).random((8, 8, 8))
    with pytest.raises(ModelFileError, match="checkpoint .*cannot be loaded safely"):
        AnoMem("digits", stage1_epochs=1).fit(images, checkpoint_dir=ckpt_dir)
    assert not marker.exists()

"""A crash mid-write leaves the previous file intact: models, checkpoints, text results.

Faults injected into each writer: ``os.replace`` raising, ``os.fsync`` raising
ENOSPC (disk full), the serialiser raising, and the process SIGKILLed between
writing the new bytes and renaming them into place (a forked child).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from anomem import AnoMem, get_config
from anomem.serialization import atomic_write_bytes, atomic_write_text
from anomem.stages.common import load_checkpoint, save_checkpoint
from anomem.torch_model import AnoMemModel

FINGERPRINT = {"config": {"seed": 0}, "data": "abc"}


def write_model(path: Path, version: int) -> None:
    det = AnoMem("digits", seed=version)
    torch.manual_seed(version)
    det.network_ = AnoMemModel(get_config("digits", {"seed": version})).eval()
    det.threshold_ = float(version)
    det.save(path)


def write_checkpoint(path: Path, version: int) -> None:
    torch.manual_seed(version)
    save_checkpoint(path, version, {"model": torch.nn.Linear(64, 64)}, FINGERPRINT)


def write_text(path: Path, version: int) -> None:
    atomic_write_text(path, f"auroc,{version}\n" * (1000 * version))


def check_model(path: Path, version: int) -> None:
    assert AnoMem.load(path).threshold_ == float(version)


def check_checkpoint(path: Path, version: int) -> None:
    step, _ = load_checkpoint(path, {"model": torch.nn.Linear(64, 64)}, FINGERPRINT)
    assert step == version


def check_text(path: Path, version: int) -> None:
    assert path.read_text() == f"auroc,{version}\n" * (1000 * version)


WRITERS: dict[str, tuple[Callable[[Path, int], None], Callable[[Path, int], None]]] = {
    "model": (write_model, check_model),
    "checkpoint": (write_checkpoint, check_checkpoint),
    "text": (write_text, check_text),
}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(params=sorted(WRITERS))
def writer(request, tmp_path):
    write, check = WRITERS[request.param]
    path = tmp_path / f"result.{request.param}"
    write(path, 1)
    check(path, 1)
    return path, write, check


def test_rename_failure_keeps_previous_file(writer, monkeypatch):
    path, write, check = writer
    before = path.read_bytes()

    def fail(*args):
        raise OSError(errno.EIO, "injected rename failure")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="injected"):
        write(path, 2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    check(path, 1)
    assert leftovers(path.parent) == []
    write(path, 2)            # and the writer still works afterwards
    check(path, 2)


def test_disk_full_during_flush_keeps_previous_file(writer, monkeypatch):
    path, write, check = writer
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write(path, 2)
    assert path.read_bytes() == before
    assert leftovers(path.parent) == []


def test_sigkill_between_write_and_rename_keeps_previous_file(writer):
    path, write, check = writer
    before = path.read_bytes()
    pid = os.fork()
    if pid == 0:                                   # child: dies inside the write
        try:
            os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
            write(path, 2)
        finally:
            os._exit(3)                            # only reached if the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert path.read_bytes() == before
    check(path, 1)
    stale = leftovers(path.parent)                 # the new bytes went to a temporary sibling
    assert len(stale) == 1 and stale[0].startswith(f".{path.name}.")
    assert (path.parent / stale[0]).stat().st_size > 0


def test_serialiser_failure_keeps_previous_model(tmp_path, monkeypatch):
    path = tmp_path / "model.anomem"
    write_model(path, 1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("injected serialiser failure")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="injected"):
        write_model(path, 2)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_unwritable_target_folder_raises_oserror_not_partial_file(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(OSError):
        write_text(blocker / "result.csv", 1)
    assert blocker.read_text() == "x"
    assert os.listdir(tmp_path) == ["not_a_folder"]


def test_new_files_get_the_umask_mode_and_rewrites_keep_the_existing_mode(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "new.bin", b"x")
        assert p.stat().st_mode & 0o777 == 0o644        # not mkstemp's private 0o600
        p.chmod(0o640)
        atomic_write_bytes(p, b"y")
        assert p.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)

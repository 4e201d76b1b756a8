"""The package reads benchmark data only where it is told: a folder argument or ANOMEM_DATA."""

from __future__ import annotations

import pytest

from anomem import InvalidInputError
from anomem.data.locate import data_file, data_root


def test_data_file_reads_the_folder_given_or_anomem_data(tmp_path, monkeypatch):
    (tmp_path / "a.tar.gz").write_bytes(b"x")
    monkeypatch.delenv("ANOMEM_DATA", raising=False)
    assert data_root() is None
    with pytest.raises(InvalidInputError, match="ANOMEM_DATA"):
        data_file("a.tar.gz")
    assert data_file("a.tar.gz", tmp_path) == tmp_path / "a.tar.gz"
    monkeypatch.setenv("ANOMEM_DATA", str(tmp_path))
    assert data_file("a.tar.gz") == tmp_path / "a.tar.gz"
    with pytest.raises(InvalidInputError, match="b.tar.gz not found"):
        data_file("b.tar.gz")

"""Results files of the grid runner: JSON Lines, one row per finished cell.

Rows are rewritten atomically under a lock, so several shards may share a
file; a row replaces an earlier one of the same ``cell``.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anomem.serialization import atomic_write_text


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``.lock, so shards do not overwrite each other's rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results file (missing file: none).

    A row is a JSON object; any other line (not UTF-8, not JSON, another JSON
    value) is skipped.
    """
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_bytes().splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def append_result(path: str | Path, row: dict[str, Any]) -> None:
    """Add ``row`` (replacing a row with the same ``cell``) and rewrite the file atomically."""
    p = Path(path)
    with locked(p):
        rows = [r for r in read_results(p) if r.get("cell") != row["cell"]] + [row]
        atomic_write_text(p, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

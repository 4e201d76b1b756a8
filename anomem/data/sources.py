"""Where the command line's images come from: folders, single files and list files.

A *source* is an image folder (searched at any depth), one image file, or a
list file:

* ``.csv`` with a header row: a ``path`` column, an optional ``label`` column
  (``0``/``normal`` or ``1``/``anomaly``, case-insensitive; empty = the role
  the list is given, e.g. normal for ``anomem fit LIST``) and an optional
  ``type`` column (anomaly type in reports; default: the file's folder name);
* ``.txt``: one image path per line; blank lines and lines starting with ``#``
  are ignored.

Relative paths in a list are read from the list file's folder.  Each image
becomes an :class:`Entry` that also records where it sits in a mirrored tree
(``name``: the source folder's name and the path below it), so per-image
outputs such as heatmaps keep the input's layout.

Example:
    >>> entries = expand_sources(["test/good", "extra.csv"], "images")    # doctest: +SKIP
    >>> [str(e.name) for e in entries][:2]                                # doctest: +SKIP
    ['good/0000.png', 'good/0001.png']
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from anomem.data.folders import (
    IMAGE_SUFFIXES,
    LoadedImages,
    OnError,
    find_images,
    group_name,
    load_images,
)
from anomem.errors import InvalidInputError

LIST_SUFFIXES = (".csv", ".txt")
LABELS = {"0": 0, "normal": 0, "1": 1, "anomaly": 1}
#: How many offending files an error message names before it only counts the rest.
SHOWN = 3


@dataclass(frozen=True)
class Entry:
    """One image file of a source.

    Attributes:
        path: the file (relative paths stay relative to the working directory).
        name: its place in a mirrored output tree, e.g. ``defects/crazing/crazing_100.jpg``.
        label: 1 = anomaly, 0 = normal from a list's ``label`` column; None = the source's role.
        group: anomaly type (first sub-folder below a folder source; a list's ``type``
            column or the file's folder name).
    """

    path: Path
    name: PurePosixPath
    label: int | None = None
    group: str = ""


def is_list_file(path: str | Path) -> bool:
    """A ``.csv`` or ``.txt`` file, read as a list of image paths."""
    p = Path(path)
    return p.suffix.lower() in LIST_SUFFIXES and p.is_file()


def _below(base: Path, path: Path) -> PurePosixPath:
    """``path`` relative to ``base`` when it lies below it, else just its file name."""
    try:
        return PurePosixPath(path.resolve().relative_to(base.resolve()).as_posix())
    except ValueError:
        return PurePosixPath(path.name)


def _named(items: Sequence[tuple[int, str]], what: str) -> str:
    shown = ", ".join(f"{text!r} (line {line})" for line, text in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more {what}" if len(items) > SHOWN else "")


def _rows(path: Path) -> list[tuple[int, str, str, str]]:
    """(line, path, label, type) of every row of a list file, unchecked."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"list file {str(path)!r} cannot be read ({e}); save it as UTF-8 "
                                f"text") from None
    if path.suffix.lower() == ".txt":
        return [(i, s, "", "") for i, line in enumerate(text.splitlines(), 1)
                if (s := line.strip()) and not s.startswith("#")]
    reader = csv.DictReader(text.splitlines())
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
    if "path" not in columns:
        raise InvalidInputError(f"list file {str(path)!r} needs a header row with a 'path' column "
                                f"(and optionally 'label' and 'type'); its first line is "
                                f"{(text.splitlines() or [''])[0][:80]!r}")
    out = []
    for row in reader:
        def get(key: str, r: dict = row) -> str:
            return (r.get(columns.get(key, ""), "") or "").strip()
        if any(get(k) for k in ("path", "label", "type")):
            out.append((reader.line_num, get("path"), get("label"), get("type")))
    return out


def read_list(path: str | Path) -> list[Entry]:
    """The images a list file names, in its order (see the module docstring).

    Raises:
        InvalidInputError: unreadable list, no ``path`` column, no image listed, an
            empty path, a label other than 0, 1, normal or anomaly, or listed files
            that do not exist (all named, with their line numbers).
    """
    src = Path(path)
    rows = _rows(src)
    if not rows:
        raise InvalidInputError(f"list file {str(src)!r} names no images; put one image path per "
                                f"line (.txt) or rows under a 'path' column (.csv)")
    empty = [(line, "") for line, p, _, _ in rows if not p]
    if empty:
        raise InvalidInputError(f"list file {str(src)!r}: empty path at line {empty[0][0]}; give "
                                f"every row an image path")
    bad = [(line, lab) for line, _, lab, _ in rows if lab and lab.lower() not in LABELS]
    if bad:
        raise InvalidInputError(f"list file {str(src)!r}: label {_named(bad, 'bad labels')} is not "
                                f"one of 0, 1, normal, anomaly; fix the 'label' column")
    files = [(line, src.parent / p) for line, p, _, _ in rows]
    missing = [(line, p) for line, p, _, _ in rows if not (src.parent / p).is_file()]
    if missing:
        raise InvalidInputError(f"list file {str(src)!r}: {len(missing)} listed image(s) do not "
                                f"exist: {_named(missing, 'files')}; fix the paths (relative "
                                f"paths are read from the list's folder {str(src.parent)!r})")
    return [Entry(f, _below(src.parent, f), LABELS[lab.lower()] if lab else None, kind or f.parent.name)
            for (_, f), (_, _, lab, kind) in zip(files, rows, strict=True)]


def expand_source(source: str | Path, what: str = "image") -> list[Entry]:
    """The images of one source: a folder (at any depth), a list file or one image file.

    Raises:
        InvalidInputError: the path does not exist, a folder holds no image, or a bad list.
    """
    p = Path(source)
    if is_list_file(p):
        return read_list(p)
    if p.is_dir():
        root = PurePosixPath(p.resolve().name)
        return [Entry(f, root / f.relative_to(p).as_posix(), None, group_name(p, f))
                for f in find_images(p, what)]
    if p.is_file():
        return [Entry(p, PurePosixPath(p.name), None, p.parent.resolve().name)]
    if p.suffix.lower() in LIST_SUFFIXES + IMAGE_SUFFIXES:
        raise InvalidInputError(f"{what} file {str(p)!r} does not exist; check the path")
    find_images(p, what)   # raises: the folder does not exist
    raise AssertionError("unreachable")


def expand_sources(sources: Iterable[str | Path], what: str = "image") -> list[Entry]:
    """:func:`expand_source` of each source, concatenated in order."""
    out = [e for s in sources for e in expand_source(s, what)]
    if not out:
        raise InvalidInputError("no image paths given; pass image files, folders or list files")
    return out


def load_entries(entries: Sequence[Entry], size: int, on_error: OnError = "fail",
                 progress: bool = False, what: str = "images") -> tuple[LoadedImages, list[Entry]]:
    """:func:`~anomem.data.folders.load_images` of the entries, and the entries that were kept."""
    loaded = load_images([e.path for e in entries], size, on_error, progress, what)
    bad = {p for p, _ in loaded.skipped}
    return loaded, [e for e in entries if e.path not in bad]


def by_label(groups: Iterable[tuple[Sequence[Entry], int]]) -> tuple[list[Entry], list[Entry]]:
    """(normal, anomalies) of ``(entries, role)`` groups: a list's label wins over the role.

    ``role`` is 0 for a source given as normal images, 1 for one given as anomalies.
    """
    out: tuple[list[Entry], list[Entry]] = ([], [])
    for entries, role in groups:
        for e in entries:
            out[role if e.label is None else e.label].append(e)
    return out


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def check_disjoint(normal: Sequence[Entry], anomalies: Sequence[Entry]) -> None:
    """Refuse an image that is both normal and an anomaly (the same file, or the same bytes).

    Only files of equal size are hashed, so disjoint sets cost one ``stat`` per file.

    Raises:
        InvalidInputError: naming the overlapping files and the fix.
    """
    same_file = {e.path.resolve(): e.path for e in normal}
    same_size: dict[int, list[Path]] = {}
    for e in normal:
        same_size.setdefault(e.path.stat().st_size, []).append(e.path)
    same_bytes: dict[str, Path] = {}
    hashed: set[int] = set()
    pairs = []
    for e in anomalies:
        twin, size = same_file.get(e.path.resolve()), e.path.stat().st_size
        if twin is None and size in same_size:
            if size not in hashed:
                hashed.add(size)
                for p in same_size[size]:
                    same_bytes.setdefault(_digest(p), p)
            twin = same_bytes.get(_digest(e.path))
        if twin is not None:
            same = twin.resolve() == e.path.resolve()
            pairs.append(repr(str(e.path)) + ("" if same else f" (same content as {str(twin)!r})"))
    if pairs:
        shown = "; ".join(pairs[:SHOWN]) + (f"; and {len(pairs) - SHOWN} more" if len(pairs) > SHOWN else "")
        raise InvalidInputError(
            f"{len(pairs)} image(s) are given both as anomalies and as normal images (the same "
            f"file, or the same content): {shown}; each image must be in one set only: move the "
            f"anomalies out of "
            f"the normal folder (a folder of anomalies inside the normal folder is read as normal "
            f"too) or remove the duplicates")


def mirror_names(entries: Sequence[Entry], suffix: str = ".png") -> list[str]:
    """Unique output names that keep the input tree: ``defects/crazing/crazing_100`` + suffix.

    Two images that would share a name (``x.jpg`` and ``x.png`` in one folder, or two
    sources with the same folder name) never overwrite each other: the second keeps
    its extension (``x_png``), later ones get ``-2``, ``-3``, ...  Returned without
    ``suffix``; comparison ignores case (case-insensitive file systems).
    """
    taken: set[str] = set()
    out = []
    for e in entries:
        stem = e.name.with_suffix("")
        ext = e.name.suffix.lstrip(".")
        candidates = [str(stem)] + ([f"{stem}_{ext}"] if ext else [])
        name = next((c for c in candidates if (c + suffix).casefold() not in taken), None)
        k = 2
        while name is None:
            c = f"{candidates[-1]}-{k}"
            name, k = (c if (c + suffix).casefold() not in taken else None), k + 1
        taken.add((name + suffix).casefold())
        out.append(name)
    return out

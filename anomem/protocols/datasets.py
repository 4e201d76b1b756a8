"""The datasets of a benchmark grid: reading a spec, keeping some classes, resizing, subsampling.

A dataset spec is a name or a mapping::

    cifar10_jpeg                               # the JPEG archive found under ANOMEM_DATA
    {name: cifar10, path: ..., label: c10}     # label: the name the rows use (default: name)
    {name: cifar100, path: ..., coarse: true}  # the 20 superclasses (false: the 100 classes)
    {name: digits, seed: 0}                    # scikit-learn's digits; seed of the split
    {name: folders, path: ...}                 # path/train/<class>/..., path/test/<class>/...

Two keys work on every dataset, so that one archive can play several parts:

* ``size: 32`` resizes every image to 32 x 32 RGB (gray repeated to three
  channels, alpha dropped, bilinear and antialiased, as the model resizes its
  input), the (N, H, W, 3) layout the CIFAR readers return; e.g. the 8 x 8
  digits as an out-of-distribution set beside CIFAR-10;
* ``classes: [6, 7, 8, 9]`` keeps those classes, relabelled 0..k-1 in the
  order given, with their names; e.g. CIFAR-10 classes 0-5 against 6-9.

The grid's ``train_per_class`` / ``test_per_class`` subsample each dataset on
its own, per class, after ``classes`` (seeded, the same for every cell).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anomem.data.dataset import LabelledSplit
from anomem.errors import ConfigError, InvalidInputError

DATASET_NAMES = ("cifar10_jpeg", "cifar10", "cifar100", "digits", "folders")
#: Keys a dataset mapping may hold.
DATASET_KEYS = ("name", "path", "label", "seed", "coarse", "size", "classes")
#: Side ``folders`` images are read at when the spec gives no ``size``.
FOLDERS_SIZE = 32


def is_int(v: Any) -> bool:
    """A Python integer that is not a bool (as YAML reads one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _as_mapping(spec: Any) -> dict[str, Any]:
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, dict):
        return dict(spec)
    raise ConfigError(f"a dataset must be a name or a mapping such as {{name: digits}}, got {spec!r}")


def dataset_label(spec: str | dict[str, Any]) -> str:
    """The name a dataset's rows use: its ``label``, else its ``name``."""
    d = _as_mapping(spec)
    return str(d.get("label", d.get("name")))


def check_dataset_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """The spec as a mapping, its name and keys checked (ConfigError naming the key and fix)."""
    d = _as_mapping(spec)
    name = d.get("name")
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; use {', '.join(DATASET_NAMES)}")
    where = f"dataset {dataset_label(d)!r}"
    unknown = [k for k in d if k not in DATASET_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(DATASET_KEYS)}")
    if name not in ("cifar10_jpeg", "digits") and d.get("path") is None:
        raise ConfigError(f"dataset {name!r} needs a 'path' (e.g. {{name: {name}, path: ...}})")
    if not isinstance(d.get("path", ""), (str, Path)):
        raise ConfigError(f"{where}: 'path' must be a file or folder path, got {d['path']!r}")
    if not is_int(d.get("seed", 0)) or not isinstance(d.get("coarse", True), bool):
        raise ConfigError(f"{where}: 'seed' must be an integer and 'coarse' true or false")
    size = d.get("size")
    if size is not None and not (is_int(size) and size >= 1):
        raise ConfigError(f"{where}: 'size' must be a positive integer side in pixels (e.g. "
                          f"size: 32), got {size!r}")
    classes = d.get("classes")
    if classes is not None and not (isinstance(classes, list) and classes
                                    and all(is_int(c) and c >= 0 for c in classes)
                                    and len(set(classes)) == len(classes)):
        raise ConfigError(f"{where}: 'classes' must be a non-empty list of distinct class indices "
                          f"(e.g. classes: [0, 1, 2]), got {classes!r}")
    return d


def check_dataset_specs(specs: list[Any]) -> None:
    """Every spec of a grid checked, and their labels distinct (rows are keyed by label)."""
    seen: set[str] = set()
    for spec in specs:
        label = dataset_label(check_dataset_spec(spec))
        if label in seen:
            raise ConfigError(f"two datasets are labelled {label!r}; give each a distinct 'label' "
                              f"(e.g. {{name: cifar10_jpeg, classes: [0, 1], label: cifar2}})")
        seen.add(label)


def _read(d: dict[str, Any]) -> LabelledSplit:
    """The whole split of a checked spec, as its reader returns it."""
    from anomem.data import cifar
    from anomem.data.digits import load_digits_split
    from anomem.data.locate import CIFAR10_JPEG, data_file

    name, path = d["name"], d.get("path")
    if name == "cifar10_jpeg":
        return cifar.cached_cifar10_jpeg(path or data_file(CIFAR10_JPEG))
    if name == "digits":
        return load_digits_split(seed=int(d.get("seed", 0)))
    if name == "cifar10":
        return cifar.read_cifar10_python(path)
    if name == "cifar100":
        return cifar.read_cifar100_python(path, coarse=bool(d.get("coarse", True)))
    from anomem.data.folders import read_class_folders
    size = int(d.get("size") or FOLDERS_SIZE)
    xtr, ytr, classes = read_class_folders(Path(path) / "train", size)
    xte, yte, test_classes = read_class_folders(Path(path) / "test", size)
    if classes != test_classes:
        raise InvalidInputError(f"dataset folder {path!r}: train/ and test/ must hold the "
                                f"same class sub-folders")
    return LabelledSplit(xtr, ytr, xte, yte, classes)


def select_classes(split: LabelledSplit, classes: list[int], label: str = "dataset") -> LabelledSplit:
    """Only the images of ``classes``, relabelled 0..k-1 in that order, their names kept."""
    n = len(split.classes)
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise ConfigError(f"dataset {label!r}: class index(es) {bad} out of range; it has {n} "
                          f"classes, 0..{n - 1} ({', '.join(split.classes)})")
    new = np.full(n, -1, np.int64)
    new[list(classes)] = np.arange(len(classes))

    def keep(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = np.isin(y, classes)
        return x[m], new[y[m]]

    (xtr, ytr), (xte, yte) = keep(split.x_train, split.y_train), keep(split.x_test, split.y_test)
    return LabelledSplit(xtr, ytr, xte, yte, tuple(split.classes[c] for c in classes))


def _rgb(x: np.ndarray, size: int, what: str) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) images as uint8 (N, size, size, 3)."""
    from anomem.data.convert import to_image_tensor

    if x.ndim == 4 and x.shape[1:] == (size, size, 3) and x.dtype == np.uint8:
        return x
    if len(x) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    if x.ndim not in (3, 4):
        raise InvalidInputError(f"{what} must be (N, H, W) or (N, H, W, C) images, got shape "
                                f"{x.shape}")
    nchw = x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)   # the layout said, not guessed
    return to_image_tensor(nchw, size, what).permute(0, 2, 3, 1).numpy()


def resize_split(split: LabelledSplit, size: int, label: str = "dataset") -> LabelledSplit:
    """Every image resized to ``size`` x ``size`` RGB uint8 (N, size, size, 3)."""
    return LabelledSplit(_rgb(split.x_train, size, f"dataset {label!r} training images"),
                         split.y_train, _rgb(split.x_test, size, f"dataset {label!r} test images"),
                         split.y_test, split.classes)


def subsample(split: LabelledSplit, train_per_class: int | None, test_per_class: int | None,
              seed: int = 0) -> LabelledSplit:
    """Keep at most the given number of images per class (seeded, same for every cell)."""
    rng = np.random.default_rng(seed)

    def pick(y: np.ndarray, k: int | None) -> np.ndarray:
        if k is None:
            return np.arange(len(y))
        return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k]
                                       for c in np.unique(y)]))

    a, b = pick(split.y_train, train_per_class), pick(split.y_test, test_per_class)
    return LabelledSplit(split.x_train[a], split.y_train[a], split.x_test[b], split.y_test[b],
                         split.classes)


def load_dataset(spec: str | dict[str, Any], train_per_class: int | None = None,
                 test_per_class: int | None = None) -> tuple[str, LabelledSplit]:
    """A dataset of the grid: its label and its split (see the module docstring).

    Its ``classes`` are kept first, then each class is subsampled (``None``: all
    images), then the images are resized to ``size``.
    """
    d = check_dataset_spec(spec)
    label = dataset_label(d)
    split = _read(d)
    if d.get("classes") is not None:
        split = select_classes(split, d["classes"], label)
    split = subsample(split, train_per_class, test_per_class)
    if d.get("size") is not None:
        split = resize_split(split, int(d["size"]), label)
    return label, split


def load_all(grid: dict[str, Any]) -> dict[str, LabelledSplit]:
    """Every dataset of the grid by label, each subsampled per class as the grid says."""
    out = {}
    for spec in grid["datasets"]:
        label, split = load_dataset(spec, grid.get("train_per_class"), grid.get("test_per_class"))
        out[label] = split
    return out

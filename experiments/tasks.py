"""The image sets and budgets the probes share: one function from (image set, seed) to tasks.

* ``digits``: scikit-learn's digits, the ``digits`` preset, one-vs-all split of the seed;
* ``cifar``: CIFAR-10 (the JPEG archive in ``ANOMEM_DATA``), the ``cpu`` preset at
  the ``cpu`` grid's budget (3 stage-1 epochs, 1,000 training images per class,
  200 test images per class), one-vs-all of the seed;
* ``cifar-full``: the same at the full ``cpu`` preset (10 stage-1 epochs, all
  5,000 training images of the class, the whole 10,000-image test split);
* ``mtd``: Magnetic Tile Defects at 64 x 64, the ``mtd`` preset with 6 stage-1
  epochs, defect-free tiles vs every defect (``split_mtd(seed)``); ``mtd-kK``
  moves K labelled defects of every type into training.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def task_source(dataset: str, seed: int, gamma: float = 0.0) -> tuple[Any, str, dict[str, Any]]:
    """(a function class -> task, preset, preset overrides) for one image set and seed.

    ``gamma`` adds labelled anomalies to the one-vs-all tasks (digits, CIFAR-10); on
    Magnetic Tile Defects, ``mtd-kK`` moves K labelled defects of every type into training.
    """
    from anomem.protocols.one_vs_all import make_one_vs_all
    if dataset.startswith("mtd"):   # "mtd-kK": K labelled defects of every type in training
        from anomem.data.mtd import read_mtd, split_mtd
        k = int(dataset.removeprefix("mtd-k")) if dataset.startswith("mtd-k") else 0
        sp = split_mtd(read_mtd(side=64), seed=seed, labelled_per_type=k)
        task = SimpleNamespace(x_train=sp.train.images, labels_train=sp.train.labels,
                               x_test=sp.test.images, labels_test=sp.test.labels)
        return (lambda c: task), "mtd", {"stage1_epochs": 6, "image_size": 64}
    if dataset == "digits":
        from anomem.data.digits import load_digits_split
        split = load_digits_split(seed=seed)
        return (lambda c: make_one_vs_all(split, c, gamma, seed)), "digits", {}
    from anomem.protocols.runner import load_dataset, subsample
    _, split = load_dataset("cifar10_jpeg")
    if dataset == "cifar-full":
        return (lambda c: make_one_vs_all(split, c, gamma, seed)), "cpu", {}
    split = subsample(split, 1000, 200, 0)
    return (lambda c: make_one_vs_all(split, c, gamma, seed)), "cpu", {"stage1_epochs": 3}

"""Validation data carved from a training split: where defaults are chosen, never the test split.

Every default of this package is chosen on validation data and the test split
is scored once, with the choice made (``docs/design.md``, "How a default is
chosen").  :func:`carve_validation` moves a seeded, stratified share of every
class's *training* images into the "test" half of a new split, so the usual
protocols (one-vs-all: the class's held-out training images as normals, the
other classes' held-out training images as anomalies) run on it unchanged and
never see a test image.

Example:
    >>> import numpy as np
    >>> from anomem.data.dataset import LabelledSplit
    >>> s = LabelledSplit(np.zeros((10, 2, 2), np.uint8), np.array([0] * 5 + [1] * 5),
    ...                   np.zeros((4, 2, 2), np.uint8), np.array([0, 0, 1, 1]), ("a", "b"))
    >>> v = carve_validation(s, fraction=0.4)
    >>> len(v.y_train), len(v.y_test), sorted(v.y_test.tolist())
    (6, 4, [0, 0, 1, 1])
"""

from __future__ import annotations

import numpy as np

from anomem.data.dataset import LabelledSplit
from anomem.errors import InvalidInputError


def carve_validation(split: LabelledSplit, fraction: float = 0.2, seed: int = 0) -> LabelledSplit:
    """Training images only: ``fraction`` of every class held out as the new split's test half.

    Per class, ``round(fraction * n)`` training images (at least one, and at
    least one left to train on) drawn with ``seed`` become the validation
    images; the test split of ``split`` is dropped.

    Raises:
        InvalidInputError: ``fraction`` outside (0, 1), or a class with fewer than 2 images.
    """
    if not 0.0 < fraction < 1.0:
        raise InvalidInputError(f"fraction must be in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(split.y_train):
        of_class = np.flatnonzero(split.y_train == c)
        if len(of_class) < 2:
            raise InvalidInputError(f"class {split.classes[int(c)]!r} has {len(of_class)} training "
                                    f"image(s); carving validation images needs at least 2")
        k = min(max(1, int(round(fraction * len(of_class)))), len(of_class) - 1)
        held.append(rng.permutation(of_class)[:k])
    val = np.zeros(len(split.y_train), dtype=bool)
    val[np.concatenate(held)] = True
    return LabelledSplit(split.x_train[~val], split.y_train[~val], split.x_train[val],
                         split.y_train[val], split.classes)

"""Relative error reduction between two AUROCs (paper §4).

With the AUROC error e = 1 - a, going from a1 to a2 changes the error by

    r = ((1 - a2) - (1 - a1)) / (1 - a1)

so r = -0.5 means a2 halves a1's error (negative = better), r = 0 means no
change.  AUROCs are fractions in [0, 1].

Example:
    >>> relative_error_reduction(0.90, 0.95)
    -0.5
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from anomem.errors import InvalidInputError


def relative_error_reduction(a1: float, a2: float) -> float:
    """((1 - a2) - (1 - a1)) / (1 - a1) for AUROCs ``a1`` -> ``a2`` in [0, 1]."""
    for name, a in (("a1", a1), ("a2", a2)):
        if not 0.0 <= a <= 1.0:
            raise InvalidInputError(f"{name} must be an AUROC in [0, 1], got {a}; divide "
                                    f"percentages by 100")
    if a1 == 1.0:
        raise InvalidInputError("a1 = 1 has no error to reduce; the relative change is undefined")
    return float(((1.0 - a2) - (1.0 - a1)) / (1.0 - a1))


def mean_auroc(rows: list[dict[str, Any]]) -> dict[tuple[str, str, float], float]:
    """Mean AUROC per (method, dataset, gamma) of result rows (see the runner)."""
    acc: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for r in rows:
        acc[(r["method"], r["dataset"], float(r["gamma"]))].append(float(r["auroc"]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def compare(rows: list[dict[str, Any]], baseline: str, method: str
            ) -> dict[tuple[str, float], float]:
    """Relative error reduction of ``method`` over ``baseline`` per (dataset, gamma).

    Only cells (dataset, class, gamma, draw) both methods finished are compared.
    """
    def key(r: dict[str, Any]) -> tuple[str, int, float, int]:
        return r["dataset"], int(r["normal_class"]), float(r["gamma"]), int(r.get("draw", 0))

    a = {key(r): r for r in rows if r["method"] == baseline}
    b = {key(r): r for r in rows if r["method"] == method}
    shared = sorted(set(a) & set(b))
    if not shared:
        raise InvalidInputError(f"no cell was finished by both {baseline!r} and {method!r}")
    m1 = mean_auroc([a[k] for k in shared])
    m2 = mean_auroc([b[k] for k in shared])
    return {(ds, g): relative_error_reduction(m1[(baseline, ds, g)], m2[(method, ds, g)])
            for (_, ds, g) in m1}

"""Image-level detection metrics, with anomalies (label 1) as the positive class.

Scores are higher for more anomalous images; a score strictly above the
threshold is called an anomaly (as :meth:`anomem.detector.AnoMem.predict`).

Example (the hand-worked case of the tests):
    >>> labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    >>> auroc(labels, scores), round(aupr(labels, scores), 4)
    (0.75, 0.8333)
    >>> fpr_at_tpr(labels, scores), f1_at_threshold(labels, scores, 0.3)
    (0.5, 0.8)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_curve

from anomem.errors import InvalidInputError
from anomem.protocols.one_vs_all import auroc as _roc_auc


def _checked(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise InvalidInputError(f"labels and scores must be 1-D of the same length, got shapes "
                                f"{y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise InvalidInputError("labels must hold only 0 (normal) and 1 (anomaly)")
    if not (y == 0).any() or not (y == 1).any():
        raise InvalidInputError("metrics need both normal (0) and anomalous (1) images; "
                                "add images of the missing kind")
    if not np.isfinite(s).all():
        raise InvalidInputError("scores contain NaN or infinite values")
    return y.astype(np.int64), s


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (probability an anomaly outscores a normal image; ties count 1/2)."""
    y, s = _checked(labels, scores)
    return _roc_auc(y, s)


def aupr(labels: Any, scores: Any) -> float:
    """Area under the precision-recall curve, as average precision sum_k (R_k - R_k-1) P_k."""
    y, s = _checked(labels, scores)
    return float(average_precision_score(y, s))


def fpr_at_tpr(labels: Any, scores: Any, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate reaches ``tpr``."""
    if not 0.0 < tpr <= 1.0:
        raise InvalidInputError(f"tpr must be in (0, 1], got {tpr}")
    y, s = _checked(labels, scores)
    fpr, tprs, _ = roc_curve(y, s)
    return float(fpr[np.argmax(tprs >= tpr - 1e-12)])


def confusion_at_threshold(labels: Any, scores: Any, threshold: float) -> dict[str, int]:
    """Counts tp, fp, tn, fn when ``score > threshold`` is called an anomaly."""
    y, s = _checked(labels, scores)
    pred = s > threshold
    return {"tp": int((pred & (y == 1)).sum()), "fp": int((pred & (y == 0)).sum()),
            "tn": int((~pred & (y == 0)).sum()), "fn": int((~pred & (y == 1)).sum())}


def f1_at_threshold(labels: Any, scores: Any, threshold: float) -> float:
    """F1 = 2 TP / (2 TP + FP + FN) of the decisions ``score > threshold`` (0 when TP = 0)."""
    c = confusion_at_threshold(labels, scores, threshold)
    denom = 2 * c["tp"] + c["fp"] + c["fn"]
    return 2 * c["tp"] / denom if denom else 0.0


def detection_metrics(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """Every metric of the evaluation report in one mapping."""
    c = confusion_at_threshold(labels, scores, threshold)
    return {"auroc": auroc(labels, scores), "aupr": aupr(labels, scores),
            "fpr_at_95_tpr": fpr_at_tpr(labels, scores, 0.95),
            "f1": f1_at_threshold(labels, scores, threshold), "threshold": float(threshold),
            "precision": c["tp"] / max(c["tp"] + c["fp"], 1),
            "recall": c["tp"] / max(c["tp"] + c["fn"], 1),
            "false_rejection_rate": c["fp"] / max(c["fp"] + c["tn"], 1),
            **{k: float(v) for k, v in c.items()}}

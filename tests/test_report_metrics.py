"""Detection metrics against hand-worked cases, and the evaluation report on a real digits model."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from PIL import Image

from anomem import AnoMem, InvalidInputError
from anomem.data.convert import to_image_tensor
from anomem.reports.metrics import aupr, auroc, detection_metrics, f1_at_threshold, fpr_at_tpr
from anomem.reports.report import (
    OVERLAY_MIN_SIDE,
    csv_text,
    overlay,
    safe_name,
    write_report,
)

# Hand-worked case: sorted by score, 0.8 (anomaly) > 0.4 (normal) > 0.35 (anomaly) > 0.1 (normal).
LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_auroc_hand_worked():
    # pairs (anomaly, normal): (0.35, 0.1) win, (0.35, 0.4) lose, (0.8, *) win twice -> 3/4
    assert auroc(LABELS, SCORES) == pytest.approx(0.75)
    assert auroc([0, 1], [1.0, 1.0]) == pytest.approx(0.5)  # a tie counts one half
    assert auroc([0, 1], [2.0, 1.0]) == pytest.approx(0.0)  # inverted scores


def test_aupr_hand_worked():
    # recall 1/2 at precision 1 (0.8), recall 1 at precision 2/3 (0.35): 0.5 * 1 + 0.5 * 2/3
    assert aupr(LABELS, SCORES) == pytest.approx(0.5 + 1 / 3)


def test_fpr_at_95_tpr_hand_worked():
    # 95% TPR needs both anomalies: threshold 0.35 also takes the normal at 0.4 -> FPR 1/2
    assert fpr_at_tpr(LABELS, SCORES) == pytest.approx(0.5)
    # at 50% TPR the threshold 0.8 takes no normal
    assert fpr_at_tpr(LABELS, SCORES, tpr=0.5) == pytest.approx(0.0)


def test_f1_at_threshold_hand_worked():
    # t = 0.3: flagged 0.4, 0.35, 0.8 -> TP 2, FP 1, FN 0 -> 2*2 / (4 + 1) = 0.8
    assert f1_at_threshold(LABELS, SCORES, 0.3) == pytest.approx(0.8)
    # t = 0.35: a score equal to the threshold is normal -> TP 1, FP 1, FN 1 -> 2 / 4
    assert f1_at_threshold(LABELS, SCORES, 0.35) == pytest.approx(0.5)
    assert f1_at_threshold(LABELS, SCORES, 5.0) == 0.0
    m = detection_metrics(LABELS, SCORES, 0.3)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 0)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["false_rejection_rate"] == pytest.approx(0.5)


@pytest.mark.parametrize("labels, scores, match", [
    ([0, 0], [0.1, 0.2], "both normal"),
    ([0, 1], [0.1, 0.2, 0.3], "same length"),
    ([0, 2], [0.1, 0.2], "only 0"),
    ([0, 1], [0.1, np.nan], "NaN"),
])
def test_metrics_reject_bad_input(labels, scores, match):
    with pytest.raises(InvalidInputError, match=match):
        auroc(labels, scores)


@pytest.fixture(scope="module")
def fitted(digits):
    det = AnoMem("digits", stage1_epochs=1).fit(digits.x_train[digits.y_train == 0][:60])
    pick = np.r_[np.flatnonzero(digits.y_test == 0)[:12], np.flatnonzero(digits.y_test == 7)[:12]]
    images = to_image_tensor(digits.x_test[pick], det.config_.backbone.image_size)
    labels = (digits.y_test[pick] == 7).astype(np.int64)
    return det, images, labels


def test_heatmaps_have_the_input_side_and_follow_the_images(fitted):
    det, images, _ = fitted
    heat = det.anomaly_map(images)
    assert heat.shape == (len(images), 16, 16)
    assert np.isfinite(heat).all() and (heat >= 0).all()
    assert not np.allclose(heat[0], heat[-1])
    # one image alone gets the same map as inside a batch (no batch coupling, which would move
    # it by O(its scale)); 1 vs 24 images only changes the float32 kernels' rounding (measured
    # 1e-6 of the scale), so 1e-4 of the scale
    np.testing.assert_allclose(det.anomaly_map(images[3:4])[0], heat[3], rtol=0,
                               atol=1e-4 * float(np.abs(heat).max()))
    ov = overlay(images[0], heat[0], float(heat.min()), float(heat.max()))
    assert ov.dtype == np.uint8 and ov.shape[2] == 3 and min(ov.shape[:2]) >= OVERLAY_MIN_SIDE


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_report_files_and_content(fitted, tmp_path, fmt):
    det, images, labels = fitted
    scores = det.decision_function(images)
    m = detection_metrics(labels, scores, det.threshold_)
    names = [f"img{i}.png" for i in range(len(images))]
    report = write_report(tmp_path, det, labels=labels, scores=scores, threshold=det.threshold_,
                          names=names, images=images, metrics=m,
                          per_type=[("digit7", 12, m["auroc"], m["recall"])],
                          summary="test summary", fmt=fmt, top=3)
    assert report == tmp_path / f"report.{fmt}"
    text = report.read_text()
    for png in ("roc.png", "histogram.png", "top_anomalies.png"):
        assert png in text
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and min(im.size) > 100
    assert f"{m['auroc']:.4f}" in text and f"{m['aupr']:.4f}" in text and "digit7" in text
    top = names[int(np.argmax(scores))]
    assert top in text
    ranked = re.findall(r"img\d+\.png", text)
    assert ranked[0] == top  # the ranking starts with the highest score


def test_csv_text_quotes_and_safe_names():
    text = csv_text(("path", "score"), [("a,b.png", "1.5"), ('q"x.png', "2")])
    assert list(csv.reader(io.StringIO(text))) == [["path", "score"], ["a,b.png", "1.5"],
                                                   ['q"x.png', "2"]]
    assert safe_name("parts/a b/x.png") == "parts_a_b_x_png"
    assert safe_name("parts/x.png") != safe_name("parts/x.jpg")

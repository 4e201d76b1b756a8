"""TorchScript and ONNX exports score real digits like the Python model (to 1e-4 of the scores' scale)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch

from anomem import AnoMem, InvalidInputError, RequiresFitting
from anomem.data.convert import to_image_tensor
from anomem.export import (
    TOLERANCE,
    ExportError,
    export_model,
    exported_scores,
    score_scale,
    verify_export,
)


@pytest.fixture(scope="module")
def test_images(digits):
    return to_image_tensor(digits.x_test[:37], 16)  # a batch size other than the traced one (2)


@pytest.fixture(scope="module")
def one_class(digits):
    return AnoMem("digits", stage1_epochs=1).fit(digits.x_train[digits.y_train == 0][:60])


@pytest.fixture(scope="module")
def semi_supervised(digits):
    idx = np.r_[np.flatnonzero(digits.y_train == 0)[:60], np.flatnonzero(digits.y_train == 5)[:6]]
    labels = (digits.y_train[idx] == 5).astype(int)
    return AnoMem("digits", stage1_epochs=1, stage2_epochs=2).fit(digits.x_train[idx], labels)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("kind", ["one_class", "semi_supervised"])
def test_exported_scores_equal_python_scores(request, tmp_path, test_images, fmt, kind):
    det = request.getfixturevalue(kind)
    path = export_model(det, tmp_path / f"m.{fmt}", fmt)
    expected = det.decision_function(test_images)
    got = exported_scores(path, fmt, test_images.float().div(255).numpy())
    assert got.shape == expected.shape == (37,)
    # 1e-4 of the scores' scale (their largest magnitude, or their per-scale terms'): onnxruntime's
    # kernels round differently from torch's (measured 1e-6 to 3e-5 of it), TorchScript's are torch's
    bound = TOLERANCE * score_scale(det, test_images)
    np.testing.assert_allclose(got, expected, rtol=0, atol=bound)
    assert verify_export(det, path, fmt, test_images) <= bound
    assert np.std(expected) > 0  # the images really are scored differently


def test_traced_graph_runs_every_hopfield_step_like_the_early_exit(one_class, tmp_path, test_images):
    # with a huge tolerance every query converges at step 1 and Python leaves the loop early;
    # the traced graph runs all steps, freezing converged queries, and must agree
    for mem in one_class.model.memories:
        mem.tol = 10.0
    try:
        for fmt in ("torchscript", "onnx"):
            path = export_model(one_class, tmp_path / f"early.{fmt}", fmt)
            got = exported_scores(path, fmt, test_images.float().div(255).numpy())
            np.testing.assert_allclose(got, one_class.decision_function(test_images), rtol=0,
                                       atol=TOLERANCE * score_scale(one_class, test_images))
    finally:
        for mem in one_class.model.memories:
            mem.tol = one_class.config.hopfield_tol


def test_metadata_travels_with_the_file(one_class, tmp_path):
    ts = export_model(one_class, tmp_path / "m.pt", "torchscript")
    extra = {"anomem.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch 2.13
        torch.jit.load(str(ts), _extra_files=extra)
    meta = json.loads(extra["anomem.json"])
    assert meta["image_size"] == "16" and float(meta["threshold"]) == one_class.threshold_
    ox = export_model(one_class, tmp_path / "m.onnx", "onnx")
    props = {p.key: p.value for p in onnx.load(str(ox)).metadata_props}
    assert props["threshold"] == meta["threshold"] and "N, 3, 16, 16" in props["input"]


def test_verify_export_catches_a_model_that_scores_differently(one_class, tmp_path, test_images):
    path = export_model(one_class, tmp_path / "m.onnx", "onnx")
    one_class.model.score_mean += 0.01  # the Python model changes after export
    try:
        with pytest.raises(ExportError, match="differ from the Python model"):
            verify_export(one_class, path, "onnx", test_images)
    finally:
        one_class.model.score_mean -= 0.01
    bound = TOLERANCE * score_scale(one_class, test_images)
    assert verify_export(one_class, path, "onnx", test_images) <= bound


def test_kmeans_prototypes_export(digits, tmp_path, test_images):
    det = AnoMem("digits", stage1_epochs=1, prototypes="kmeans").fit(digits.x_train[digits.y_train == 1][:60])
    path = export_model(det, tmp_path / "k.onnx", "onnx")
    assert verify_export(det, path, "onnx", test_images) <= TOLERANCE * score_scale(det, test_images)


def test_export_errors(tmp_path, one_class):
    with pytest.raises(RequiresFitting):
        export_model(AnoMem("digits"), tmp_path / "x.onnx", "onnx")
    with pytest.raises(InvalidInputError, match="unknown"):
        export_model(one_class, tmp_path / "x.tf", "tensorflow")

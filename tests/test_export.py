"""TorchScript and ONNX exports score real digits like the Python model (to 1e-4 of the scores' scale)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch

from anomem import AnoMem, AnoMemEnsemble, InvalidInputError, RequiresFitting
from anomem.data.convert import to_image_tensor
from anomem.export import (
    TOLERANCE,
    ExportError,
    export_model,
    exported_scores,
    score_scale,
    verify_export,
    well_posed,
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


@pytest.fixture(scope="module")
def semi_supervised_flips(digits):
    """Semi-supervised, every test-time view (``score_views="flips"``): the exported graph flips."""
    idx = np.r_[np.flatnonzero(digits.y_train == 0)[:60], np.flatnonzero(digits.y_train == 5)[:6]]
    labels = (digits.y_train[idx] == 5).astype(int)
    return AnoMem("digits", stage1_epochs=1, stage2_epochs=2, score_views="flips").fit(
        digits.x_train[idx], labels)


@pytest.fixture(scope="module")
def ensemble(digits):
    """Two members: one graph holds both networks and the standardisation."""
    return AnoMemEnsemble("digits", members=2, stage1_epochs=1).fit(digits.x_train[digits.y_train == 0][:60])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("kind", ["one_class", "semi_supervised", "semi_supervised_flips", "ensemble"])
def test_exported_scores_equal_python_scores(request, tmp_path, test_images, fmt, kind):
    det = request.getfixturevalue(kind)
    path = export_model(det, tmp_path / f"m.{fmt}", fmt)
    expected = det.decision_function(test_images)
    got = exported_scores(path, fmt, test_images.float().div(255).numpy())
    assert got.shape == expected.shape == (37,)
    # 1e-4 of the scores' scale (their largest magnitude, or their per-scale terms'): onnxruntime's
    # kernels round differently from torch's (measured 1e-6 to 3e-5 of it), TorchScript's are torch's
    bound = TOLERANCE * score_scale(det, test_images)
    keep = well_posed(det, test_images)           # no retrieval tie left to rounding
    assert keep.sum() >= len(keep) // 2
    np.testing.assert_allclose(got[keep], expected[keep], rtol=0, atol=bound)
    assert verify_export(det, path, fmt, test_images) <= bound
    assert np.std(expected) > 0  # the images really are scored differently


def test_traced_graph_runs_every_hopfield_step_like_the_early_exit(one_class, tmp_path, test_images):
    # with a huge tolerance every query converges at step 1 and Python leaves the loop early;
    # the traced graph runs all steps, freezing converged queries, and must agree
    for mem in one_class.network_.memories:
        mem.tol = 10.0
    try:
        for fmt in ("torchscript", "onnx"):
            path = export_model(one_class, tmp_path / f"early.{fmt}", fmt)
            got = exported_scores(path, fmt, test_images.float().div(255).numpy())
            keep = well_posed(one_class, test_images)
            np.testing.assert_allclose(got[keep], one_class.decision_function(test_images)[keep],
                                       rtol=0, atol=TOLERANCE * score_scale(one_class, test_images))
    finally:
        for mem in one_class.network_.memories:
            mem.tol = one_class.config_.memory.hopfield_tol


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
    one_class.network_.score_mean += 0.01  # the Python model changes after export
    try:
        with pytest.raises(ExportError, match="differ from the Python model"):
            verify_export(one_class, path, "onnx", test_images)
    finally:
        one_class.network_.score_mean -= 0.01
    bound = TOLERANCE * score_scale(one_class, test_images)
    assert verify_export(one_class, path, "onnx", test_images) <= bound


def test_kmeans_prototypes_export(digits, tmp_path, test_images):
    det = AnoMem("digits", stage1_epochs=1, prototypes="kmeans").fit(digits.x_train[digits.y_train == 1][:60])
    path = export_model(det, tmp_path / "k.onnx", "onnx")
    assert verify_export(det, path, "onnx", test_images) <= TOLERANCE * score_scale(det, test_images)


def test_export_errors(tmp_path, one_class):
    for unfitted in (AnoMem("digits"), AnoMemEnsemble("digits", members=2)):
        with pytest.raises(RequiresFitting, match="not fitted"):
            export_model(unfitted, tmp_path / "x.onnx", "onnx")
    with pytest.raises(InvalidInputError, match="unknown"):
        export_model(one_class, tmp_path / "x.tf", "tensorflow")


def test_a_retrieval_tie_is_left_out_of_the_check_and_the_rest_still_compared(one_class, tmp_path,
                                                                              test_images):
    # An image whose pooled last-scale vector lies exactly halfway between two distinct patterns
    # is ill-posed: rounding picks either.  Two patterns placed symmetrically about one test
    # image's vector make it so; the other images are still compared, and a real difference
    # in their scores is still caught.
    model = one_class.network_
    mem = model.memory(len(model.view_scales(0)) - 1)   # the image's own view's last scale
    kept = mem.patterns.detach().clone()
    with torch.no_grad():
        z = model.features(test_images[:1].float().div(255))[-1].flatten()
        q = torch.nn.functional.normalize(z, dim=0)
        side = torch.randn(len(q), generator=torch.Generator().manual_seed(0))
        side = torch.nn.functional.normalize(side - (side @ q) * q, dim=0)      # orthogonal to q
        mem.patterns[0], mem.patterns[1] = q + 0.01 * side, q - 0.01 * side    # equidistant from q
    try:
        keep = well_posed(one_class, test_images)
        assert not keep[0] and keep[1:].sum() >= len(keep) // 2
        path = export_model(one_class, tmp_path / "tie.onnx", "onnx")
        bound = TOLERANCE * score_scale(one_class, test_images)
        assert verify_export(one_class, path, "onnx", test_images) <= bound
        model.score_mean += 0.01                    # the Python model changes after export
        try:
            with pytest.raises(ExportError, match="differ from the Python model"):
                verify_export(one_class, path, "onnx", test_images)
        finally:
            model.score_mean -= 0.01
    finally:
        with torch.no_grad():
            mem.patterns.copy_(kept)


def test_retrieval_margin_is_the_gap_to_the_second_distinct_pattern():
    from anomem.memory import HopfieldMemory

    mem = HopfieldMemory(dim=2, size=3, scoring="nearest")
    with torch.no_grad():
        mem.patterns.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))    # a copy of e0
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.6, 0.8]])
    # attentions to the distinct patterns e0, e1: (1, 0), (0.707, 0.707), (0.6, 0.8)
    torch.testing.assert_close(mem.retrieval_margin(q), torch.tensor([1.0, 0.0, 0.2]), rtol=0, atol=1e-6)
    assert torch.isinf(HopfieldMemory(dim=2, size=3, scoring="hopfield").retrieval_margin(q)).all()
    km = HopfieldMemory(dim=2, size=3, scoring="kmeans")
    with torch.no_grad():
        km.patterns.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))    # centroids
    # distances of the normalised queries to e0 and e1: (0, 1.414), (0.765, 0.765), (0.894, 0.632)
    torch.testing.assert_close(km.retrieval_margin(q), torch.tensor([2 ** 0.5, 0.0, 0.894427 - 0.632456]),
                               rtol=0, atol=1e-5)

"""Semi-supervised fitting choices (see docs/design.md): which stage sees the labelled
anomalies, how the one-class score is standardised before the heads are added, and how
the heads' batches are drawn and how much the one-class score weighs beside them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.config import ConfigError, get_config
from anomem.losses import sup_loss
from anomem.stages import stage2
from anomem.stages.common import RunOptions
from anomem.stages.stage2 import balanced_weights, calibrate_scales, one_class_weight
from anomem.torch_model import AnoMemModel

TINY = {"width": 4, "stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 8, "consolidate": 0}


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("contrast", [False, True])
def test_contrast_anomalies_false_trains_stage1_as_the_one_class_fit(contrast):
    normals, anomalies = _images(16, 0), _images(4, 1)
    oc = AnoMem("digits", **TINY).fit(normals, validation_fraction=0.0, progress=False)
    ss = AnoMem("digits", **TINY, contrast_anomalies=contrast).fit(
        np.concatenate([normals, anomalies]), np.r_[np.zeros(16), np.ones(4)],
        validation_fraction=0.0, progress=False)
    a, b = oc.network.encoder.state_dict(), ss.network.encoder.state_dict()
    same = all(torch.equal(a[k], b[k]) for k in a)
    # without the anomalies in stage 1 the encoder is the one-class fit's, bit for bit; with
    # them (the paper's stage 1) the batches differ, and so does the encoder
    assert same is not contrast


def test_contrast_anomalies_is_validated():
    with pytest.raises(ConfigError, match="contrast_anomalies"):
        get_config("digits", {"contrast_anomalies": "no"})


def test_fused_calibration_standardises_the_alpha_fused_one_class_score():
    torch.manual_seed(0)
    model = AnoMemModel(get_config("digits", {**TINY, "calibration": "fused"})).eval()
    normals = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    calibrate_scales(model, normals, RunOptions())     # consolidate=0: in-sample scores
    with torch.no_grad():
        per = model.oc_scores(model.deviation_maps(normals.float() / 255))
    fused = [sum(a * s for a, s in zip(model.alphas.tolist(), row)) for row in per.tolist()]
    mean = sum(fused) / len(fused)
    std = (sum((f - mean) ** 2 for f in fused) / (len(fused) - 1)) ** 0.5
    assert model.score_mean.tolist() == pytest.approx([mean] * len(model.scales), rel=1e-5)
    assert model.score_std.tolist() == pytest.approx([std] * len(model.scales), rel=1e-5)
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        want = (model.oc_scores(model.deviation_maps(x)) @ model.alphas - mean) / std
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling, share", [("uniform", 0.25), ("balanced", 0.5)])
def test_balanced_sampling_gives_each_class_half_the_mass(monkeypatch, sampling, share):
    y = torch.tensor([1.0] * 9 + [0.0] * 3)
    w = balanced_weights(y)
    assert w[y == 1].sum().item() == pytest.approx(0.5) and w[y == 0].sum().item() == pytest.approx(0.5)
    seen: list[torch.Tensor] = []

    def spy(d: torch.Tensor, yb: torch.Tensor, margin: float) -> torch.Tensor:
        seen.append(yb.clone())
        return sup_loss(d, yb, margin)

    monkeypatch.setattr(stage2, "sup_loss", spy)
    AnoMem("digits", **{**TINY, "stage2_epochs": 40}, head_sampling=sampling).fit(
        _images(12, 2), (1 - y).numpy(), validation_fraction=0.0, progress=False)
    anomalous = 1 - torch.cat(seen).mean().item()
    # 40 batches of 8 from 9 normal and 3 anomalous images: a quarter anomalous when every
    # image is alike (exactly: 8 of a permutation of 12), a half (std 0.028) when balanced
    assert anomalous == pytest.approx(share, abs=0.1)


def test_one_class_weight_falls_as_one_over_the_root_of_the_labelled_anomalies():
    # hand-worked: sqrt(4 / 16) = 0.5, sqrt(4 / 4) = 1, sqrt(6 / 150) = 0.2; null keeps 1
    assert one_class_weight(4.0, 16) == 0.5 and one_class_weight(4.0, 4) == 1.0
    assert one_class_weight(6.0, 150) == pytest.approx(0.2, rel=1e-12)
    assert one_class_weight(None, 150) == 1.0 and one_class_weight(0.0, 9) == 0.0
    with pytest.raises(ConfigError, match="oc_evidence"):
        get_config("digits", {"oc_evidence": -1})


@pytest.mark.parametrize("evidence, want", [(None, 1.0), (1.0, 0.5), (9.0, 1.5)])
def test_fit_weighs_the_one_class_score_by_its_labelled_anomalies(evidence, want):
    # 4 labelled anomalies: sqrt(1 / 4) = 0.5, sqrt(9 / 4) = 1.5
    det = AnoMem("digits", **TINY, oc_evidence=evidence).fit(
        np.concatenate([_images(12, 3), _images(4, 4)]), np.r_[np.zeros(12), np.ones(4)],
        validation_fraction=0.0, progress=False)
    assert det.network.oc_weight.item() == pytest.approx(want, rel=1e-6)

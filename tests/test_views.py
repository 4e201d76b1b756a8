"""Test-time views (``score_views``): the score is the mean of Eq. 13 over flips of the image,
each flip compared with memories of its own, consolidated on the same flip of the normals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from anomem import AnoMem
from anomem.config import ConfigError, get_config
from anomem.config.checks import SCORE_VIEWS
from anomem.data.convert import to_image_tensor
from anomem.localisation import anomaly_map
from anomem.stages.common import RunOptions
from anomem.stages.consolidate import consolidate_on_maps, consolidate_prototypes, feature_maps
from anomem.torch_model import AnoMemModel

TINY = {"width": 4, "stage1_epochs": 1, "stage2_epochs": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def flips(digits):
    """A one-class fit on digit 0 with every view of ``score_views="flips"``."""
    return AnoMem("digits", **TINY, score_views="flips").fit(
        digits.x_train[digits.y_train == 0][:48], validation_fraction=0.0, progress=False)


def one_view(model: AnoMemModel, v: int) -> AnoMemModel:
    """A single-view model with ``model``'s encoder and the memories of its view ``v``."""
    single = AnoMemModel(model.config.replace(score_views="single"))
    n = len(model.memories) // len(model.views)
    single.encoder = model.encoder
    single.memories = nn.ModuleList(model.memories[v * n:(v + 1) * n])
    single.score_mean.copy_(model.score_mean[v * n:(v + 1) * n])      # that view's calibration
    single.score_std.copy_(model.score_std[v * n:(v + 1) * n])
    return single.eval()


def test_score_is_the_mean_over_views_of_each_views_eq13(flips, digits):
    model = flips.network
    assert len(model.views) == 4 and len(model.memories) == 4 * 4    # 4 memories a view
    x = to_image_tensor(digits.x_test[:9], 16).float() / 255
    with torch.no_grad():
        want = torch.stack([one_view(model, v)(x.flip(dims) if dims else x)
                            for v, dims in enumerate(SCORE_VIEWS["flips"])]).mean(0)
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)


def test_each_views_memories_are_consolidated_on_that_view_of_the_normals(flips, digits):
    # consolidation ends near a fixed point of its Lloyd steps on the vectors it ran on: one
    # more step on the same view of the normals barely moves a view's memories, on another
    # view it moves them far
    model = flips.network
    normals = to_image_tensor(digits.x_train[digits.y_train == 0][:48], 16)
    moved = {}
    for v in (1, 2):
        for w, dims in ((1, (3,)), (2, (2,))):
            single = one_view(copy.deepcopy(model), v)     # consolidation leaves it in train mode
            before = [m.patterns.detach().clone() for m in single.memories]
            single.config = single.config.replace(consolidate=1)
            consolidate_prototypes(single, normals.flip(dims), torch.ones(len(normals)),
                                   RunOptions(), grow=False)
            moved[v, w] = sum(float((m.patterns.detach() - b).norm())
                              for m, b in zip(single.memories, before))
    # measured: 0.6 and 1e-6 on their own view, 10.4 and 9.5 on the other
    assert moved[1, 1] < 0.2 * moved[1, 2] and moved[2, 2] < 0.2 * moved[2, 1]


def test_consolidation_view_by_view_equals_every_view_at_once(flips, digits):
    # consolidate_prototypes holds one view's maps at a time; each view's memories serve its
    # scales alone and draw from one generator in memory order, so the patterns are those of
    # Lloyd steps on every view's maps at once, bit for bit
    normals = to_image_tensor(digits.x_train[digits.y_train == 0][:24], 16)
    by_view, at_once = copy.deepcopy(flips.network), copy.deepcopy(flips.network)
    consolidate_prototypes(by_view, normals, torch.ones(len(normals)), RunOptions(), grow=False)
    consolidate_on_maps(at_once.eval(), feature_maps(at_once, normals, RunOptions()), RunOptions())
    for a, b, start in zip(by_view.memories, at_once.memories, flips.network.memories):
        assert torch.equal(a.patterns, b.patterns) and not torch.equal(a.patterns, start.patterns)


def test_out_of_fold_scores_view_by_view_equal_every_view_at_once(flips, digits):
    # calibration's out-of-fold scores, one view's maps at a time, against every view's maps
    # consolidated and scored at once for each half
    from anomem.stages.common import stream_seed
    from anomem.stages.stage2 import out_of_fold_scores

    model = copy.deepcopy(flips.network)
    normals = to_image_tensor(digits.x_train[digits.y_train == 0][:24], 16)
    got = out_of_fold_scores(model, normals, RunOptions())
    order = torch.randperm(24, generator=torch.Generator().manual_seed(
        stream_seed(model.config.runtime.seed, "calibrate")))
    maps, want = feature_maps(model, normals, RunOptions()), torch.zeros(24, len(model.scales))
    for fold in (order[0::2], order[1::2]):
        other = copy.deepcopy(model)
        rest = torch.ones(24, dtype=torch.bool)
        rest[fold] = False
        consolidate_on_maps(other, [z[rest] for z in maps], RunOptions())
        want[fold] = other.oc_scores(other.deviations([z[fold] for z in maps]))
    torch.testing.assert_close(got, torch.cat([want[order[0::2]], want[order[1::2]]]),
                               rtol=0, atol=0)


def test_the_heatmap_averages_the_views_flipped_back(flips, digits):
    model = flips.network
    x = to_image_tensor(digits.x_test[:3, None], 16).float() / 255
    with torch.no_grad():
        views = [anomaly_map(one_view(model, v), x.flip(dims) if dims else x, sigma=0.0)
                 for v, dims in enumerate(SCORE_VIEWS["flips"])]
        want = torch.stack([m.flip([d - 1 for d in dims]) if dims else m
                            for m, dims in zip(views, SCORE_VIEWS["flips"])]).mean(0)
        torch.testing.assert_close(anomaly_map(model, x, sigma=0.0), want, rtol=1e-5, atol=1e-6)


def test_semi_supervised_views_train_a_head_per_view_and_scale(digits):
    idx = np.r_[np.flatnonzero(digits.y_train == 0)[:40], np.flatnonzero(digits.y_train == 3)[:4]]
    det = AnoMem("digits", **TINY, score_views="mirror").fit(
        digits.x_train[idx], (digits.y_train[idx] == 3).astype(int), validation_fraction=0.0,
        progress=False)
    model = det.network
    assert len(model.heads) == len(model.scales) == 2 * 4
    assert model.score_std.shape == (8,) and bool((model.score_std > 0).all())
    assert np.isfinite(det.decision_function(digits.x_test[:10])).all()


def test_kmeans_memories_hold_one_memory_per_scale_and_view(digits):
    det = AnoMem("digits", **TINY, prototypes="kmeans", score_views="mirror").fit(
        digits.x_train[digits.y_train == 0][:48], validation_fraction=0.0, progress=False)
    model = det.network
    assert len(model.memories) == len(model.scales) == 8
    assert [s.memory for s in model.scales] == list(range(8))
    # the mirror view's image-level centroids are not the image's own
    assert not torch.equal(model.memories[3].patterns, model.memories[7].patterns)


def test_score_views_is_validated():
    with pytest.raises(ConfigError, match="scoring.views"):
        get_config("digits", {"score_views": "rotations"})

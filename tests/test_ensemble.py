"""AnoMemEnsemble: its scores, maps and thresholds against a naive computation, files, conventions."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from sklearn.base import clone

from anomem import (
    AnoMem,
    AnoMemEnsemble,
    ConfigError,
    ModelFileError,
    RequiresFitting,
    ensemble,
    load_detector,
)
from anomem.cli.main import main
from anomem.config import get_config
from anomem.data.convert import to_image_tensor
from anomem.ensemble import make_detector, member_images, member_seeds, resolve_members
from anomem.fit_setup import holdout_indices
from anomem.serialization import atomic_torch_save, safe_torch_load
from anomem.threshold import order_statistic_threshold

FAST = {"stage1_epochs": 1}
pytestmark = pytest.mark.filterwarnings("ignore::anomem.threshold.ThresholdWarning")


@pytest.fixture(scope="module")
def fitted(digits):
    x = digits.x_train[digits.y_train == 3][:100]
    log: list[dict] = []
    ens = AnoMemEnsemble("digits", members=3, seed=7, **FAST).fit(x, log=log.append)
    return ens, x, log


def naive_standardised(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (values - reference.mean()) / reference.std()


def test_members_train_with_their_own_seeds_on_the_images_not_held_out(fitted):
    ens, x, log = fitted
    seeds = [m.config_.runtime.seed for m in ens.members_]
    assert seeds == member_seeds(7, 3) and len(set(seeds)) == 3
    weights = [next(m.network_.parameters()).detach() for m in ens.members_]
    assert not torch.equal(weights[0], weights[1])
    held = holdout_indices(torch.ones(len(x)), 0.2, 7)
    assert ens.threshold_normals_ == len(held) == 20
    # every member's log rows are there, marked with the member
    assert {row["member"] for row in log} == {0, 1, 2}


def test_scores_maps_and_thresholds_match_a_naive_computation(fitted, digits):
    ens, x, _ = fitted
    held = holdout_indices(torch.ones(len(x)), 0.2, 7).numpy()
    train = np.setdiff1d(np.arange(len(x)), held)
    test = digits.x_test[:30]
    # the maps at the model's side (16 px): images given at that side keep it
    side = ens.config_.backbone.image_size
    test_s, train_s = to_image_tensor(test, side), to_image_tensor(x[train], side)
    scores, maps = [], []
    for m in ens.members_:
        scores.append(naive_standardised(m.decision_function(test), m.decision_function(x[train])))
        own = m.anomaly_map(train_s)                    # 80 training normals: all set the map scale
        maps.append(naive_standardised(m.anomaly_map(test_s), own))
    np.testing.assert_allclose(ens.member_scores(test), scores, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ens.decision_function(test), np.mean(scores, axis=0), rtol=1e-9, atol=1e-9)
    # float32 maps standardised in float32 against float64 statistics: a few ulps of values of order 10
    np.testing.assert_allclose(ens.anomaly_map(test_s), np.mean(maps, axis=0), rtol=1e-5, atol=1e-5)
    assert ens.threshold_ == order_statistic_threshold(ens.decision_function(x[held]), 0.05)
    assert ens.pixel_threshold_ == pytest.approx(
        order_statistic_threshold(ens.anomaly_map(to_image_tensor(x[held], side)), 0.05), rel=1e-5)
    np.testing.assert_array_equal(ens.decision_scores_, ens.decision_function(x))
    assert ens.predict(test).tolist() == (ens.decision_function(test) > ens.threshold_).astype(int).tolist()
    assert ens.predict_mask(test[:2]).shape == (2, 8, 8)


def test_member_images_draw_a_share_of_the_normals_and_keep_every_anomaly():
    y = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 1, 1])        # 8 normals, anomalies at 1 and 4
    assert member_images(y, 1.0, 3).tolist() == list(range(10))
    draws = {tuple(member_images(y, 0.5, seed).tolist()) for seed in range(20)}
    for d in draws:
        assert list(d) == sorted(set(d)) and {1, 4} <= set(d)
        assert len(d) == 2 + 4                             # round(0.5 * 8) normals
    assert len(draws) > 1                                  # the draw moves with the seed
    assert member_images(y, 0.5, 7).tolist() == member_images(y, 0.5, 7).tolist()
    assert len(member_images(y, 0.01, 0)) == 2 + 2         # at least two normals


def test_subsample_gives_each_member_its_own_share_of_the_training_images(digits, monkeypatch, tmp_path):
    seen: list[torch.Tensor] = []
    original = AnoMem.fit_network

    def recording(self, cfg, x, y, options):
        seen.append(x.clone())
        return original(self, cfg, x, y, options)

    monkeypatch.setattr(AnoMem, "fit_network", recording)
    x = digits.x_train[digits.y_train == 4][:50]
    ens = AnoMemEnsemble("digits", members=3, subsample=0.6, seed=2, **FAST).fit(x, validation_fraction=0.2)
    assert [len(s) for s in seen] == [24, 24, 24]              # round(0.6 * 40) of 40 training normals
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert ens.threshold_normals_ == 10                        # the hold-out is the ensemble's, shared
    assert AnoMemEnsemble.load(ens.save(tmp_path / "e.anomem")).get_params()["subsample"] == 0.6


def test_one_member_is_one_fit_up_to_an_increasing_affine_map(digits):
    x = digits.x_train[digits.y_train == 5][:40]
    ens = AnoMemEnsemble("digits", members=1, seed=3, **FAST).fit(x, validation_fraction=0)
    single = AnoMem("digits", seed=member_seeds(3, 1)[0], **FAST).fit(x, validation_fraction=0)
    test = digits.x_test[:40]
    s = single.decision_function(test)
    expected = (s - ens.score_loc_[0]) / ens.score_scale_[0]
    np.testing.assert_allclose(ens.decision_function(test), expected, rtol=1e-9, atol=1e-9)
    assert ens.score_loc_[0] == pytest.approx(single.decision_function(x).mean(), rel=1e-12)


def test_save_and_load_either_kind_of_model_file(fitted, digits, tmp_path):
    ens, _, _ = fitted
    test = digits.x_test[:20]
    path = ens.save(tmp_path / "e.anomem")
    for back in (AnoMemEnsemble.load(path), load_detector(path)):
        assert isinstance(back, AnoMemEnsemble) and back.members == 3
        np.testing.assert_array_equal(back.decision_function(test), ens.decision_function(test))
        np.testing.assert_array_equal(back.anomaly_map(test), ens.anomaly_map(test))
        assert (back.threshold_, back.pixel_threshold_, back.threshold_normals_) == (
            ens.threshold_, ens.pixel_threshold_, ens.threshold_normals_)
        assert back.config_.runtime.seed == 7 and back.threshold_frr_bound_ == ens.threshold_frr_bound_
    with pytest.raises(ModelFileError, match="ensemble of 3 models; load it with AnoMemEnsemble.load"):
        AnoMem.load(path)
    single = ens.members_[0].save(tmp_path / "one.anomem")
    assert type(load_detector(single)) is AnoMem
    with pytest.raises(ModelFileError, match="holds one model, not an ensemble"):
        AnoMemEnsemble.load(single)


def test_an_inconsistent_ensemble_file_is_refused(fitted, tmp_path):
    ens, _, _ = fitted
    blob = safe_torch_load(ens.save(tmp_path / "e.anomem"))
    for bad in ({"score_scale": [1.0, 2.0]}, {"map_loc": [0.0, float("nan"), 1.0]}, {"seed": -1},
                {"members": []}, {"version": 9}, {"subsample": 1.5}):
        atomic_torch_save({**blob, **bad}, tmp_path / "bad.anomem")
        with pytest.raises(ModelFileError, match="bad.anomem"):
            load_detector(tmp_path / "bad.anomem")


def test_estimator_conventions():
    ens = AnoMemEnsemble("digits", members=2, **FAST)
    assert ens.get_params() == {"config": "digits", "members": 2, "subsample": 1.0, **FAST}
    twin = clone(ens)
    assert twin.get_params() == ens.get_params() and twin is not ens
    assert repr(ens) == "AnoMemEnsemble('digits', members=2, subsample=1.0, stage1_epochs=1)"
    assert ens.set_params(members=4, stage1_epochs=2).get_params()["members"] == 4
    for bad in (0, -1, 2.0, True, "two"):
        with pytest.raises(ConfigError, match="members must be a positive integer"):
            AnoMemEnsemble("digits", members=bad)
        with pytest.raises(ConfigError, match="members must be a positive integer"):
            ens.set_params(members=bad)
    assert ens.members == 4     # a refused set_params changes nothing
    for bad in (0, 0.0, -0.5, 1.5, True, "half"):
        with pytest.raises(ConfigError, match=r"subsample must be a share of the training normals"):
            AnoMemEnsemble("digits", subsample=bad)
    with pytest.raises(ConfigError, match="unknown config key"):
        AnoMemEnsemble("digits", stage1_epoch=2)
    with pytest.raises(RequiresFitting, match="AnoMemEnsemble is not fitted"):
        ens.decision_function(np.zeros((2, 8, 8)))


def test_cli_fits_and_scores_an_ensemble(tmp_path, capsys, digits):
    from PIL import Image

    for folder, images in (("good", digits.x_train[digits.y_train == 2][:40]), ("new", digits.x_test[:5])):
        (tmp_path / folder).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(tmp_path / folder / f"{i:03d}.png")
    model = tmp_path / "e.anomem"
    assert main(["fit", str(tmp_path / "good"), "--members", "2", "--set", "stage1_epochs=1",
                 "-o", str(model), "-q"]) == 0
    assert "one-class model (an ensemble of 2 networks) written" in capsys.readouterr().err
    ens = AnoMemEnsemble.load(model)
    out = tmp_path / "s.csv"
    assert main(["score", str(model), str(tmp_path / "new"), "-o", str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    expected = ens.decision_function(to_image_tensor(
        [np.asarray(Image.open(tmp_path / "new" / f"{i:03d}.png")) for i in range(5)],
        get_config("digits").backbone.image_size))
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5)
    assert main(["export", str(model), "--format", "torchscript", "--check", str(tmp_path / "new")]) == 0
    assert "torchscript model written" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "good"), "--members", "0", "-q"]) == 2
    assert "--members must be a positive integer" in capsys.readouterr().err


def test_demo_runs_ensembles(capsys):
    assert main(["demo", "--classes", "1", "--gammas", "0", "--members", "2",
                 "--set", "stage1_epochs=1"]) == 0
    table = capsys.readouterr().out
    assert "gamma=0" in table and "knn_encoder" in table
    assert main(["demo", "--members", "0"]) == 2
    assert "--members must be a positive integer" in capsys.readouterr().err


def test_auto_members_counts_the_images_given_to_fit(digits, monkeypatch, capsys):
    n = ensemble.SMALL_SET
    assert (resolve_members("auto", n), resolve_members("auto", n + 1)) == (ensemble.AUTO_MEMBERS, 1)
    assert resolve_members(3, 10**6) == 3
    assert type(make_detector("digits", "auto", n + 1, **FAST)) is AnoMem
    assert isinstance(make_detector("digits", "auto", n, **FAST), AnoMemEnsemble)
    assert type(make_detector("digits", "auto", n, recipe="paper")) is AnoMem   # the paper fits one
    assert type(make_detector("digits", "auto", n, semi_supervised=True)) is AnoMem
    monkeypatch.setattr(ensemble, "SMALL_SET", 30)
    monkeypatch.setattr(ensemble, "AUTO_MEMBERS", 2)
    x = digits.x_train[digits.y_train == 4]
    few = AnoMemEnsemble("digits", members="auto", **FAST).fit(x[:30], progress=False)
    many = AnoMemEnsemble("digits", members="auto", **FAST).fit(x[:31], progress=False)
    assert (len(few.members_), len(many.members_), few.members) == (2, 1, "auto")
    labels = np.r_[np.zeros(26, int), np.ones(4, int)]
    x_semi = np.concatenate([x[:26], digits.x_train[digits.y_train == 7][:4]])
    semi = AnoMemEnsemble("digits", members="auto", **FAST).fit(x_semi, labels, progress=False)
    assert len(semi.members_) == 1 and semi.semi_supervised
    assert main(["demo", "--members", "two"]) == 2
    assert "--members" in capsys.readouterr().err


class Stop(Exception):
    """Stands for an interruption."""


def test_an_interrupted_ensemble_resumes_member_by_member(digits, tmp_path):
    x, test = digits.x_train[digits.y_train == 6][:60], digits.x_test[:30]
    full = AnoMemEnsemble("digits", members=2, **FAST).fit(x)

    def stop_at_member_1(row: dict) -> None:
        if row["member"] == 1:
            raise Stop

    with pytest.raises(Stop):
        AnoMemEnsemble("digits", members=2, **FAST).fit(x, checkpoint_dir=tmp_path, log=stop_at_member_1)
    assert (tmp_path / "member0" / "stage1.ckpt").is_file()
    rows: list[dict] = []
    resumed = AnoMemEnsemble("digits", members=2, **FAST).fit(x, checkpoint_dir=tmp_path, log=rows.append)
    assert rows and {row["member"] for row in rows} == {1}     # member 0 is not trained again
    np.testing.assert_array_equal(resumed.decision_function(test), full.decision_function(test))
    assert resumed.threshold_ == full.threshold_

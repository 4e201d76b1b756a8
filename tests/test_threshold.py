"""The threshold from held-out normals: its guarantee, its warnings, its file, one hold-out default."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from anomem import AnoMem, load_detector
from anomem.cli.main import main
from anomem.detector import holdout_count
from anomem.serialization import atomic_torch_save, safe_torch_load
from anomem.threshold import (
    ThresholdWarning,
    describe,
    frr_upper_bound,
    order_statistic_threshold,
    rank,
    too_few,
)

TINY = {"stage1_epochs": 1, "width": 4}


def write_digits(folder, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:04d}.png")


def test_order_statistic_is_the_kth_highest_and_holds_the_rate_on_new_data():
    assert [rank(n, 0.05) for n in (8, 18, 19, 40, 200)] == [1, 1, 1, 2, 10]
    assert order_statistic_threshold(np.array([3.0, 1.0, 5.0, 4.0, 2.0] * 8), 0.05) == 5.0
    assert too_few(18, 0.05) and not too_few(19, 0.05) and too_few(10_000, 0.0)
    # The user's case: 40 held-out normals, target 5 %.  Over many held-out draws the
    # false-alarm rate on new normals (exact, from the score distribution) averages
    # 2 / 41 <= 5 %, and is under the 95 % bound in 95 % of the draws, whatever the
    # distribution (two very different ones here).
    rng = np.random.default_rng(0)
    for dist in (stats.norm(), stats.lognorm(2.0)):
        rates = np.array([dist.sf(order_statistic_threshold(dist.rvs(40, random_state=rng), 0.05))
                          for _ in range(4000)])
        assert abs(rates.mean() - 2 / 41) < 0.002                   # sd of the mean: 0.0005
        assert abs(np.mean(rates <= frr_upper_bound(40, 0.05)) - 0.95) < 0.012   # sd 0.0035
    assert frr_upper_bound(40, 0.05) == pytest.approx(0.1132, abs=1e-3)
    assert "2nd highest of 40" in describe(40, 0.05) and "at most 11.3%" in describe(40, 0.05)


@pytest.fixture(scope="module")
def normals(digits):
    return digits.x_train[digits.y_train == 0]


def test_fit_holds_out_20_percent_by_default_and_sets_the_order_statistic(normals):
    x = normals[:60]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = AnoMem("digits", **TINY).fit(x)
    assert det.threshold_normals_ == holdout_count(60, 0.2) == 12
    held = det._holdout(torch.ones(60), 0.2)
    assert det.threshold_ == order_statistic_threshold(det.decision_function(x[held.numpy()]), 0.05)
    assert det.threshold_frr_bound_ == pytest.approx(frr_upper_bound(12, 0.05))
    # 12 held-out normals cannot hold 5 %: said once, with the number that would
    (w,) = [w for w in caught if issubclass(w.category, ThresholdWarning)]
    assert "only 12 held-out normal image(s)" in str(w.message) and "at least 19" in str(w.message)
    assert w.filename == __file__                      # points at the user's fit call


def test_enough_held_out_normals_warn_nothing_and_zero_keeps_training_on_all(normals):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThresholdWarning)
        det = AnoMem("digits", **TINY).fit(normals[:100])   # 20 held out
        assert det.threshold_normals_ == 20
        zero = AnoMem("digits", **TINY).fit(normals[:40], validation_fraction=0.0)
    assert zero.threshold_normals_ == 0 and zero.threshold_frr_bound_ is None
    with pytest.warns(ThresholdWarning, match="holds out no normal image"):
        AnoMem("digits", **TINY).fit(normals[:4, None], validation_fraction=0.2)


def test_bound_travels_in_the_model_file_and_older_files_still_load(tmp_path, normals):
    det = AnoMem("digits", **TINY).fit(normals[:100])
    path = det.save(tmp_path / "m.anomem")
    back = AnoMem.load(path)
    assert (back.threshold_, back.threshold_frr_bound_, back.threshold_normals_) == (
        det.threshold_, det.threshold_frr_bound_, 20)
    blob = safe_torch_load(path)
    del blob["threshold_frr_bound"], blob["threshold_normals"], blob["checksum"]
    old = atomic_torch_save(blob, tmp_path / "old.anomem")        # a file from before the bound
    back = AnoMem.load(old)
    assert back.threshold_ == det.threshold_ and back.threshold_frr_bound_ is None
    assert back.threshold_normals_ == 0


def test_cli_states_the_split_first_and_the_bound_last(tmp_path, capsys, normals):
    write_digits(tmp_path / "good", normals[:100])
    model = tmp_path / "m.anomem"
    assert main(["fit", str(tmp_path / "good"), "--config", "digits", "--set", "stage1_epochs=1",
                 "--set", "width=4", "-o", str(model)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("anomem fit: 100 normal images: 80 train, 20 held out for the threshold")
    k = math.floor(21 * 0.05)
    assert f"threshold {load_detector(model).threshold_:.6g} (the highest of 20 held-out" in err[-1]
    assert f"expected false-alarm rate <= {100 * k / 21:.3g}%" in err[-1]
    assert f"at most {100 * frr_upper_bound(20, 0.05):.3g}% with 95% confidence" in err[-1]
    assert not any("warning" in line for line in err)
    assert main(["fit", str(tmp_path / "good"), "--config", "digits", "--set", "stage1_epochs=1",
                 "--set", "width=4", "--set", "target_frr=0.01", "-o", str(model), "-q"]) == 0
    err = capsys.readouterr().err
    assert "anomem fit: warning: only 20 held-out normal image(s)" in err and "at least 99" in err


def test_a_subnormal_validation_fraction_warns_instead_of_overflowing():
    # found by fuzzing: 1 / 2.2e-309 is infinite; the warning must still be written
    import warnings as w

    from anomem import AnoMem
    with w.catch_warnings(record=True) as seen:
        w.simplefilter("always")
        AnoMem("digits", stage1_epochs=0, width=4).fit(np.zeros((6, 8, 8), np.uint8),
                                                        validation_fraction=2.2e-309)
    assert any("holds out no normal image" in str(x.message) for x in seen)

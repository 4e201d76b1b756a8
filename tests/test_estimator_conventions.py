"""AnoMem follows scikit-learn's estimator conventions, checked on images.

scikit-learn's own checks that need no data run as they are:
``check_parameters_default_constructible``, ``check_no_attributes_set_in_init``,
``check_get_params_invariance``, ``check_set_params``, ``check_estimator_repr`` and
``check_estimator_cloneable`` (those this scikit-learn has).  The others are written
here for images (each named after the check it stands for):

* ``check_parameters_default_constructible``, ``check_no_attributes_set_in_init``:
  ``AnoMem()`` builds, and ``__init__`` stores its arguments only;
* ``check_get_params_invariance``, ``check_set_params``: ``get_params`` returns the
  constructor's arguments (the very objects), ``set_params`` sets them and returns
  the detector; ``sklearn.base.clone`` gives an unfitted twin;
* ``check_dont_overwrite_parameters``, ``check_estimators_overwrite_params``: fit
  changes no parameter and adds only attributes ending with ``_`` (or private ones);
* ``check_fit_score_takes_y``, ``check_estimators_unfitted``: ``fit(images, labels)``,
  and scoring before fit raises :class:`~anomem.errors.RequiresFitting` (a
  ``RuntimeError``, where scikit-learn raises ``NotFittedError``);
* ``check_fit_idempotent``, ``check_methods_subset_invariance``: a refit with the same
  seed gives the same scores, and scoring a subset gives the subset's scores;
* PyOD's ``decision_scores_``: the training images' scores, as ``decision_function``
  gives them.

Checks that do not apply to an image detector, and why:

* every check that feeds tabular ``X`` of shape (n_samples, n_features) (``check_fit2d_*``,
  ``check_fit1d``, ``check_estimators_dtypes``, ``check_dtype_object``,
  ``check_estimators_empty_data_messages``, ``check_estimators_nan_inf``,
  ``check_n_features_in``, ``check_dict_unchanged``...): AnoMem takes images, and a
  2-D array is one image, refused as a batch; the image counterparts (empty input,
  NaN, dtypes, layouts) are in ``tests/test_validation.py`` and ``tests/test_inputs.py``;
* ``check_estimators_pickle``, ``check_estimator_sparse_*``: a fitted detector is saved with
  :meth:`~anomem.AnoMem.save` / :meth:`~anomem.AnoMem.load` (pickle-free, tested in
  ``tests/test_detector.py``); images are dense;
* classifier, regressor and outlier-detector checks on ``predict`` output classes
  (``check_outliers_train``, ``check_outlier_contamination``): scikit-learn's outlier
  detectors return -1/+1 and score normal images higher; AnoMem follows PyOD (1 =
  anomaly, higher score = more anomalous) and has no ``contamination`` parameter (the
  threshold comes from held-out normals and ``target_frr``);
* ``check_n_features_in_after_fitting``, ``check_requires_y_none``: there are no features
  to count, and labels are optional by design;
* ``check_do_not_raise_errors_in_init_or_set_params``: AnoMem refuses an unknown key or a
  bad value at once, in ``__init__`` and ``set_params`` (a :class:`~anomem.errors.ConfigError`
  that leaves the parameters as they were), rather than minutes later in ``fit``; it
  stores nothing derived from them;
* ``check_valid_tag_types`` and other tag checks, and ``sklearn.utils.validation.check_is_fitted``
  (which asks for tags since scikit-learn 1.6): AnoMem does not derive from
  ``sklearn.base.BaseEstimator`` and declares no tags; what ``check_is_fitted`` looks for,
  attributes ending with ``_`` after fit and none before, is checked here.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils import estimator_checks

from anomem import AnoMem, ConfigError, RequiresFitting, get_config

pytestmark = pytest.mark.filterwarnings("ignore::anomem.threshold.ThresholdWarning")
TINY = {"stage1_epochs": 1, "width": 4, "mem_sizes": [8, 4]}
SKLEARN_CHECKS = ("check_parameters_default_constructible", "check_no_attributes_set_in_init",
                  "check_get_params_invariance", "check_set_params", "check_estimator_repr",
                  "check_estimator_cloneable")


@pytest.fixture(scope="module")
def images(digits) -> np.ndarray:
    return digits.x_train[digits.y_train == 2][:24]


@pytest.fixture(scope="module")
def fitted(images) -> AnoMem:
    return AnoMem("digits", **TINY).fit(images, validation_fraction=0.25)


@pytest.mark.filterwarnings("ignore:.*delay parameter validation:UserWarning")
@pytest.mark.parametrize("name", SKLEARN_CHECKS)
def test_sklearn_checks_without_data(name):
    check = getattr(estimator_checks, name, None)
    if check is None:
        pytest.skip(f"this scikit-learn has no {name}")
    check("AnoMem", AnoMem("digits", stage1_epochs=1))


def test_init_stores_the_arguments_only():
    det = AnoMem("cpu", stage1_epochs=3)
    assert det.config == "cpu"
    assert {k for k in vars(det) if not k.startswith("_")} == {"config"}
    assert det.get_params() == {"config": "cpu", "stage1_epochs": 3}
    assert AnoMem().get_params() == {"config": "auto"}
    cfg = get_config("digits")
    assert AnoMem(cfg).config is cfg and AnoMem(cfg, seed=2).get_params()["config"] is cfg


def test_bad_arguments_are_refused_at_once_and_set_params_keeps_the_old_ones():
    with pytest.raises(ConfigError, match="unknown config key.*'bogus'"):
        AnoMem("digits", bogus=1)
    det = AnoMem("digits", seed=1)
    with pytest.raises(ConfigError, match="'backbone.width'"):
        det.set_params(width=-2)
    assert det.get_params() == {"config": "digits", "seed": 1}


def test_get_params_set_params_round_trip_and_clone():
    det = AnoMem("cpu", stage1_epochs=2)
    params = det.get_params()
    assert det.get_params(deep=False) == params
    assert det.set_params(**params) is det and det.get_params() == params
    assert det.set_params(config="digits", seed=4) is det
    assert det.get_params() == {"config": "digits", "stage1_epochs": 2, "seed": 4}
    twin = clone(AnoMem("cpu", stage1_epochs=2))
    assert type(twin) is AnoMem and twin.get_params() == {"config": "cpu", "stage1_epochs": 2}
    assert repr(twin) == "AnoMem('cpu', stage1_epochs=2)"


def test_clone_of_a_fitted_detector_is_unfitted(fitted, images):
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params()
    assert not hasattr(twin, "network_") and not hasattr(twin, "decision_scores_")
    with pytest.raises(RequiresFitting, match="not fitted"):
        twin.decision_function(images)


def test_fit_adds_only_underscored_attributes_and_changes_no_parameter(images):
    det = AnoMem("digits", **TINY)
    before = det.get_params()
    names = set(before)
    det.fit(images, validation_fraction=0.25)
    assert det.get_params() == before and det.config == "digits"
    public = {k for k in vars(det) if not k.startswith("_") and k not in names}
    assert public and all(k.endswith("_") for k in public), public
    assert {"config_", "network_", "threshold_", "decision_scores_", "history_"} <= public
    assert det.network is det.network_ and det.config_ == get_config("digits", TINY)


def test_auto_is_resolved_into_config_and_left_as_given(images):
    det = AnoMem(**TINY).fit(images, validation_fraction=0.0)
    assert det.config == "auto" and det.config_.backbone.image_size == 16   # 8 px images: digits


def test_decision_scores_are_the_training_images_scores_in_their_order(fitted, images):
    s = fitted.decision_scores_
    assert s.dtype == np.float64 and s.shape == (len(images),)      # held-out normals included
    np.testing.assert_array_equal(s, fitted.decision_function(images))


def test_labelled_fit_and_a_refit_give_the_same_scores(digits):
    x = digits.x_train[:30]
    labels = (digits.y_train[:30] == 7).astype(int)
    det = AnoMem("digits", **TINY).fit(x, labels, validation_fraction=0.0)
    first = det.decision_scores_.copy()
    np.testing.assert_array_equal(det.fit(x, labels, validation_fraction=0.0).decision_scores_, first)
    # another batch size may pick another float32 kernel blocking: a few ulp of O(1) scores
    np.testing.assert_allclose(det.decision_function(x[5:20]), det.decision_function(x)[5:20],
                               rtol=1e-6, atol=1e-6)


def test_unfitted_detectors_say_so(images):
    det = AnoMem("digits")
    for call in (det.decision_function, det.scale_scores, det.anomaly_map, det.predict):
        with pytest.raises(RequiresFitting):
            call(images)
    with pytest.raises(RequiresFitting):
        det.network  # noqa: B018 - the property raises


def test_load_sets_config_and_fitted_attributes(fitted, tmp_path, images):
    back = AnoMem.load(fitted.save(tmp_path / "m.anomem"))
    assert back.config == back.config_ == fitted.config_
    assert back.threshold_ == fitted.threshold_ and back.network_ is back.network
    np.testing.assert_array_equal(back.decision_function(images), fitted.decision_scores_)

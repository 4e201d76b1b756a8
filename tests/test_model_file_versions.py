"""Model files of an earlier format version load and score as when they were written.

The fixtures in ``tests/data`` (see its README) are files of model-file version 1
with the scores their detector gave on 40 fixed digits when it was saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomem import AnoMem
from anomem.config import from_dict, get_config
from anomem.model_file import ADDED_KEYS, LEGACY_CONFIG, MODEL_VERSION, upgrade
from anomem.serialization import safe_torch_load

DATA = Path(__file__).parent / "data"
NAMES = ["model_v1_one_class", "model_v1_semi", "model_v1_legacy", "model_v1_kmeans"]


@pytest.mark.parametrize("name", NAMES)
def test_a_version_1_file_scores_as_when_it_was_saved(name, digits, tmp_path):
    want = json.loads((DATA / "model_v1_scores.json").read_text())[name]
    det = AnoMem.load(DATA / f"{name}.anomem")
    # the same float32 operations on the same weights, in the same order: bit for bit
    np.testing.assert_array_equal(det.decision_function(digits.x_test[:40]), want)
    assert det.semi_supervised == (name in ("model_v1_semi", "model_v1_legacy"))
    # saved again, it is a file of the current version and scores alike
    again = AnoMem.load(det.save(tmp_path / "again.anomem"))
    assert safe_torch_load(tmp_path / "again.anomem", "model file")["version"] == MODEL_VERSION
    np.testing.assert_array_equal(again.decision_function(digits.x_test[:40]), want)


def test_the_upgrade_reads_the_flat_configuration_of_version_1():
    blob = safe_torch_load(DATA / "model_v1_semi.anomem", "model file")
    assert blob["version"] == 1 and blob["config"]["stage1_epochs"] == 1
    up = upgrade(blob)
    assert up["version"] == MODEL_VERSION and up["config"]["stage1"]["epochs"] == 1
    want = get_config("digits", {"width": 4, "mem_sizes": [16, 8], "stage1_epochs": 1,
                                 "stage2_epochs": 2, "consolidate_factor": 4, "beta": 10.0,
                                 "hopfield_steps": 3, "reseed_dead": True,
                                 "calibrate": False})  # that day's defaults
    assert from_dict(up["config"]) == want
    kmeans = upgrade(safe_torch_load(DATA / "model_v1_kmeans.anomem", "model file"))["state_dict"]
    assert "memories.0.patterns" in kmeans and not any(k.endswith(".centroids") for k in kmeans)


def test_a_version_1_file_from_before_a_key_loads_with_what_it_was_made_with():
    # consolidate_factor, pseudo_anomalies, score_views, image_alpha, head_sampling,
    # oc_evidence (with the oc_weight buffer) and head_deviations came later: a version-1 file
    # without them was made with memories that never grew, a stage 1 without
    # pseudo-anomalies, one view, the image-level scales weighed last, uniform batches for the
    # heads, the one-class score weighed 1 and heads trained on in-sample deviations
    blob = safe_torch_load(DATA / "model_v1_legacy.anomem", "model file")
    assert not set(LEGACY_CONFIG) & set(blob["config"]) and "oc_weight" not in blob["state_dict"]
    cfg = AnoMem.load(DATA / "model_v1_legacy.anomem").config_
    ext, sc = cfg.extensions, cfg.scoring
    assert ext.consolidate_factor == 1 and ext.pseudo_anomalies == "none"
    assert sc.views == "single" and sc.image_alpha == "last" and sc.oc_evidence is None
    assert cfg.stage2.head_sampling == "uniform" and cfg.stage2.head_deviations == "in_sample"
    # keys added within the version read as the file was made, whatever the default is now
    # (local defects of scale 1, where the default is 2)
    for key, made_with in ADDED_KEYS.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == made_with, key
    assert get_config("digits").extensions.defect_scale != ADDED_KEYS["extensions.defect_scale"]

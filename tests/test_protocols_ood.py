"""Dataset specs of a grid (``size:``, ``classes:``) and the ``ood`` protocol of the runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomem.baselines.knn import KNNDetector
from anomem.cli.main import main
from anomem.data.convert import to_image_tensor
from anomem.data.dataset import LabelledSplit
from anomem.detector import AnoMem
from anomem.errors import ConfigError, InvalidInputError
from anomem.protocols import runner
from anomem.protocols.datasets import dataset_label, load_all, load_dataset, resize_split, select_classes
from anomem.protocols.results import read_results

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "ood"


# ---------------------------------------------------------------- size: and classes:
def test_size_makes_gray_digits_rgb_at_that_side(digits: LabelledSplit) -> None:
    label, split = load_dataset({"name": "digits", "size": 32})
    assert label == "digits"
    assert split.x_train.shape == (len(digits.x_train), 32, 32, 3) and split.x_train.dtype == np.uint8
    assert split.x_test.shape == (len(digits.x_test), 32, 32, 3)
    assert (split.x_test[..., 0] == split.x_test[..., 2]).all()   # gray repeated
    np.testing.assert_array_equal(split.y_test, digits.y_test)
    same = to_image_tensor(digits.x_test[:, None], 32).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(split.x_test, same)   # the model's own resize


def test_resize_keeps_colour_images_in_the_split_layout() -> None:
    rng = np.random.default_rng(0)
    x = np.repeat(rng.integers(0, 256, (6, 1, 1, 3), dtype=np.uint8), 16, 1).repeat(16, 2)
    split = LabelledSplit(x, np.arange(6) % 2, x[:2], np.arange(2), ("a", "b"))
    small = resize_split(split, 8)
    assert small.x_train.shape == (6, 8, 8, 3) and small.x_test.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(small.x_train[:, 3, 3], x[:, 0, 0])   # flat colours stay
    assert resize_split(small, 8).x_train is small.x_train               # already there


def test_classes_keeps_a_subset_relabelled_in_the_given_order(digits: LabelledSplit) -> None:
    _, split = load_dataset({"name": "digits", "classes": [7, 2]})
    assert split.classes == ("7", "2")
    assert sorted(np.unique(split.y_train)) == [0, 1]
    np.testing.assert_array_equal(split.x_train[split.y_train == 0], digits.x_train[digits.y_train == 7])
    np.testing.assert_array_equal(split.x_test[split.y_test == 1], digits.x_test[digits.y_test == 2])
    with pytest.raises(ConfigError, match=r"out of range; it has 10 classes"):
        select_classes(digits, [3, 10], "digits")


def test_per_class_subsampling_applies_to_each_dataset_on_its_own() -> None:
    data = load_all({"datasets": [{"name": "digits", "classes": [0, 1, 2, 3, 4, 5], "label": "six"},
                                  {"name": "digits", "classes": [6, 7, 8, 9], "label": "four",
                                   "size": 16}],
                     "train_per_class": 5, "test_per_class": 3})
    assert list(data) == ["six", "four"]
    assert np.bincount(data["six"].y_train).tolist() == [5] * 6
    assert np.bincount(data["six"].y_test).tolist() == [3] * 6
    assert np.bincount(data["four"].y_train).tolist() == [5] * 4
    assert data["four"].x_test.shape == (12, 16, 16, 3) and data["six"].x_test.shape == (18, 8, 8)


@pytest.mark.parametrize("spec, match", [
    ({"name": "digits", "size": 0}, "'size' must be a positive integer"),
    ({"name": "digits", "size": "32"}, "'size' must be a positive integer"),
    ({"name": "digits", "size": True}, "'size' must be a positive integer"),
    ({"name": "digits", "classes": []}, "'classes' must be a non-empty list"),
    ({"name": "digits", "classes": [1, 1]}, "distinct class indices"),
    ({"name": "digits", "classes": [-1]}, "distinct class indices"),
    ({"name": "digits", "classes": "all"}, "distinct class indices"),
    ({"name": "digits", "sise": 32}, r"unknown key\(s\) 'sise'"),
    ({"name": "svhn"}, "unknown dataset 'svhn'"),
    ({"name": "cifar100"}, "needs a 'path'"),
    (3, "list of dataset names or"),
])
def test_bad_dataset_specs_are_config_errors_naming_the_key(spec: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        runner.load_grid({"datasets": [spec]})


def test_grid_refuses_two_datasets_with_one_label_and_a_later_encoder() -> None:
    with pytest.raises(ConfigError, match="two datasets are labelled 'digits'"):
        runner.load_grid({"datasets": ["digits", {"name": "digits", "size": 32}]})
    with pytest.raises(ConfigError, match="listed before it"):
        runner.load_grid({"methods": [{"name": "knn", "kind": "knn", "encoder": "anomem"},
                                      {"name": "anomem"}]})


# ---------------------------------------------------------------- the ood protocol
class _Oracle:
    """Scores 1 for the images of ``marked`` (the OoD test set), 0 otherwise."""

    marked: set[bytes] = set()

    def __init__(self, _cfg: Any) -> None:
        self.train_labels: np.ndarray | None = None

    def fit(self, images: np.ndarray, labels: np.ndarray) -> _Oracle:
        self.train_labels = labels
        return self

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        return np.array([float(im.tobytes() in _Oracle.marked) for im in images])


def test_ood_labels_in_distribution_0_and_the_other_dataset_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits: LabelledSplit) -> None:
    monkeypatch.setitem(runner.KINDS, "oracle", _Oracle)
    data = load_all({"datasets": [{"name": "digits", "classes": [0, 1, 2, 3, 4, 5], "label": "in"},
                                  {"name": "digits", "classes": [6, 7, 8, 9], "label": "out"}]})
    _Oracle.marked = {im.tobytes() for im in data["out"].x_test}
    grid = {"name": "o", "preset": "digits", "draws": 2,
            "methods": [{"name": "oracle"}, {"name": "again", "kind": "oracle"}]}
    rows = runner.run_protocol(grid, "ood", tmp_path / "o.jsonl", data)
    assert [r["cell"] for r in rows] == ["ood|oracle|in|out|0", "ood|again|in|out|0",
                                         "ood|oracle|in|out|1", "ood|again|in|out|1"]
    r = rows[0]
    # hand count on the raw split: digits 0-5 are in-distribution, the test images of 6-9 OoD
    assert r["n_train"] == int((digits.y_train < 6).sum())
    assert r["n_in_test"] == int((digits.y_test < 6).sum())
    assert r["n_ood"] == int((digits.y_test >= 6).sum())
    assert r["auroc"] == 1.0 and r["protocol"] == "ood" and r["ood"] == "out" and r["draw"] == 0
    assert r["encoder_reused"] is None and r["kind"] == "oracle"
    assert runner.run_protocol(grid, "ood", tmp_path / "o.jsonl", data) == []   # resumed
    with pytest.raises(ConfigError, match="two or more datasets"):
        runner.run_protocol(grid, "ood", tmp_path / "o.jsonl", {"in": data["in"]})


def test_ood_of_unequal_image_sizes_names_the_size_key(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runner.KINDS, "oracle", _Oracle)
    data = load_all({"datasets": [{"name": "digits", "size": 16}, {"name": "digits", "label": "raw"}],
                     "train_per_class": 2, "test_per_class": 2})
    with pytest.raises(InvalidInputError, match="size: <side> on both datasets"):
        runner.run_protocol({"preset": "digits", "methods": [{"name": "oracle"}]}, "ood",
                            tmp_path / "o.jsonl", data)


def test_ood_grid_reuses_the_fitted_anomem_for_the_knn(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, list[Any]] = {"anomem": [], "knn": []}

    def spy(kind: str, cls: Any) -> Any:
        def build(cfg: Any, **kw: Any) -> Any:
            made[kind].append((cls(cfg, **kw), kw.get("encoder")))
            return made[kind][-1][0]
        return build

    monkeypatch.setitem(runner.KINDS, "anomem", spy("anomem", AnoMem))
    monkeypatch.setitem(runner.KINDS, "knn", spy("knn", KNNDetector))
    cfg = tmp_path / "ood.yaml"
    cfg.write_text("name: tiny_ood\npreset: digits\n"
                   "overrides: {stage1_epochs: 1, width: 4, mem_sizes: [4, 4], device: cpu}\n"
                   "datasets:\n  - {name: digits, classes: [0, 1, 2, 3, 4, 5], label: d6}\n"
                   "  - {name: digits, classes: [6, 7, 8, 9], label: d4}\n"
                   "draws: 1\nseed: 0\ntrain_per_class: 10\ntest_per_class: 5\nmethods:\n"
                   "  - {name: anomem}\n  - {name: knn, kind: knn, encoder: anomem, k: 1}\n"
                   "  - {name: pixel_knn, kind: pixel_knn, size: 8, k: 1}\n"
                   "  - {name: deepsad, kind: deepsad}\n")
    res = tmp_path / "ood.jsonl"
    assert main(["benchmark", str(cfg), "--protocol", "ood", "--results", str(res)]) == 0
    rows = read_results(res)
    assert [r["method"] for r in rows] == ["anomem", "knn", "pixel_knn", "deepsad"]
    by = {r["method"]: r for r in rows}
    assert by["knn"]["encoder_reused"] == "anomem" and by["anomem"]["encoder_reused"] is None
    assert len(made["anomem"]) == 1 and made["knn"][0][1] is made["anomem"][0][0]  # no second AnoMem
    for r in rows:
        assert (r["n_train"], r["n_in_test"], r["n_ood"]) == (60, 30, 20)
        assert r["cell"] == f"ood|{r['method']}|d6|d4|0" and 0.0 <= r["auroc"] <= 1.0
        assert r["config"]["stage1"]["epochs"] == 1 and r["draw"] == 0
    assert by["pixel_knn"]["method_options"] == {"size": 8, "k": 1}
    json.dumps(rows)   # rows stay plain JSON


@pytest.mark.parametrize("name, n_in, out", [("far", 10, "digits32"), ("near", 6, "cifar4")])
def test_shipped_ood_grids_load(name: str, n_in: int, out: str) -> None:
    g = runner.load_grid(EXPERIMENTS / f"{name}.yaml")
    assert [m["name"] for m in g["methods"]] == ["anomem", "knn", "pixel_knn", "deepsad"]
    assert g["results"] == f"experiments/ood/{name}.jsonl" and g["draws"] == 3
    assert dataset_label(g["datasets"][1]) == out
    first = g["datasets"][0]
    assert len(first.get("classes", range(10))) == n_in

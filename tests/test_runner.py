"""The benchmark grid runner: resume, shards, encoder reuse, results file, tables, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomem.cli.main import main
from anomem.data.dataset import LabelledSplit
from anomem.errors import ConfigError
from anomem.protocols import runner
from anomem.protocols.results import append_result, read_results
from anomem.protocols.runner import load_grid, run_grid
from anomem.reports.tables import render


class MeanDistance:
    """A cheap detector: distance to the mean normal training image. Counts its fits."""

    fits: list[str] = []

    def __init__(self, config: Any, encoder: Any = None, fail_on: int | None = None) -> None:
        self.encoder, self.fail_on = encoder, fail_on

    def fit(self, images: np.ndarray, labels: np.ndarray) -> MeanDistance:
        MeanDistance.fits.append("fit")
        if self.fail_on is not None and len(MeanDistance.fits) == self.fail_on:
            raise KeyboardInterrupt  # an interrupted sweep
        x = images.reshape(len(images), -1).astype(float)
        self.mu = x[labels == 0].mean(0)
        return self

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        return np.linalg.norm(images.reshape(len(images), -1) - self.mu, axis=1)


@pytest.fixture()
def grid(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setitem(runner.KINDS, "fake", MeanDistance)
    MeanDistance.fits = []
    return load_grid({"name": "t", "preset": "digits", "datasets": ["digits"],
                      "classes": [0, 1, 2], "gammas": [0.0, 0.05], "draws": 1,
                      "methods": [{"name": "a", "kind": "fake"},
                                  {"name": "b", "kind": "fake", "encoder": "a"}]})


@pytest.fixture(scope="module")
def datasets(digits: LabelledSplit) -> dict[str, Any]:
    return {"digits": digits}


def test_interrupted_sweep_resumes_with_only_the_missing_cells(
        grid: dict[str, Any], datasets: dict[str, Any], tmp_path: Path) -> None:
    res = tmp_path / "r.jsonl"
    grid["methods"][0]["fail_on"] = 5
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, res, progress=False, datasets=datasets)
    first = read_results(res)
    assert len(first) == 4  # cells 1-4 stored at once; the 5th was interrupted
    del grid["methods"][0]["fail_on"]
    MeanDistance.fits = []
    added = run_grid(grid, res, progress=False, datasets=datasets)
    assert len(added) == 12 - 4 and len(MeanDistance.fits) == 8
    rows = read_results(res)
    assert len({r["cell"] for r in rows}) == 12
    assert {r["cell"] for r in first} <= {r["cell"] for r in rows}
    assert run_grid(grid, res, progress=False, datasets=datasets) == []


def test_rows_hold_config_seed_time_memory_and_reuse(grid: dict[str, Any], datasets: dict[str, Any],
                                                     tmp_path: Path) -> None:
    rows = run_grid(grid, tmp_path / "r.jsonl", progress=False, max_cells=4, datasets=datasets)
    assert [r["method"] for r in rows] == ["a", "b", "a", "b"]
    assert [r["gamma"] for r in rows] == [0.0, 0.0, 0.05, 0.05]
    r = rows[1]
    assert r["encoder_reused"] == "a" and rows[0]["encoder_reused"] is None
    assert r["config"]["backbone"]["arch"] == "resnet18" and r["seed"] == 0
    assert r["wall_s"] >= 0 and r["peak_rss_mb"] > 10 and 0 <= r["auroc"] <= 1
    assert rows[2]["n_anomalies_train"] > 0 and rows[0]["n_anomalies_train"] == 0


def test_shards_split_the_grid_without_overlap(grid: dict[str, Any], datasets: dict[str, Any],
                                               tmp_path: Path) -> None:
    res = tmp_path / "r.jsonl"
    a = run_grid(grid, res, (0, 2), progress=False, datasets=datasets)
    b = run_grid(grid, res, (1, 2), progress=False, datasets=datasets, reverse=True)
    ka, kb = {r["cell"] for r in a}, {r["cell"] for r in b}
    assert not ka & kb and len(ka | kb) == 12 and len(read_results(res)) == 12
    assert b[0]["normal_class"] == 2 and b[0]["method"] == "a"  # reversed groups, same method order


def test_results_file_replaces_same_cell_and_skips_torn_lines(tmp_path: Path) -> None:
    res = tmp_path / "r.jsonl"
    append_result(res, {"cell": "x", "auroc": 0.1})
    append_result(res, {"cell": "y", "auroc": 0.2})
    append_result(res, {"cell": "x", "auroc": 0.3})
    with open(res, "a") as fh:
        fh.write('{"cell": "z", "au')  # a torn write
    rows = read_results(res)
    assert [(r["cell"], r["auroc"]) for r in rows] == [("y", 0.2), ("x", 0.3)]


def test_grid_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="gamas"):
        load_grid({"gamas": [0.0]})
    with pytest.raises(ConfigError, match="unknown kind"):
        load_grid({"methods": [{"name": "x", "kind": "nope"}]})


def test_results_lines_that_are_not_json_objects_are_skipped(tmp_path: Path) -> None:
    """Cases the fuzzer found: a binary file (UnicodeDecodeError) and JSON values that are not rows."""
    res = tmp_path / "r.jsonl"
    res.write_bytes(b'\xff\xfe\x9c\n[1, 2]\n"text"\n{"cell": "x", "auroc": 0.5}\n{"no": "cell"}\n')
    assert read_results(res) == [{"cell": "x", "auroc": 0.5}, {"no": "cell"}]
    append_result(res, {"cell": "y", "auroc": 0.2})
    assert [r.get("cell") for r in read_results(res)] == ["x", None, "y"]


@pytest.mark.parametrize("grid, match", [
    ({1: "x"}, "keys must be names"),                      # found by the fuzzer: a TypeError before
    ({"methods": "anomem"}, "'methods'"),
    ({"methods": [5]}, "'methods'"),
    ({"methods": [{"name": "a", "overrides": [1]}]}, "'overrides' must be a mapping"),
    ({"name": "../elsewhere"}, "'name'"),
    ({"classes": "some"}, "'classes'"),
    ({"gammas": ["x"]}, "'gammas'"),
    ({"draws": 0}, "'draws'"),
    ({"datasets": [3]}, "'datasets'"),
])
def test_grid_values_of_the_wrong_type_are_config_errors(grid: dict[Any, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_grid(grid)


def test_tables_show_paper_numbers_and_missing_cells() -> None:
    grid = load_grid({"name": "c", "datasets": ["cifar10_jpeg"], "gammas": [0.0, 0.05],
                      "methods": [{"name": "anomem", "paper": "anomem"},
                                  {"name": "deepsad", "kind": "deepsad", "paper": "deepsad"}]})
    classes = ["c0", "c1"] + [f"c{i}" for i in range(2, 10)]
    rows = [{"cell": f"{m}|cifar10_jpeg|{c}|{g:g}|0", "method": m, "dataset": "cifar10_jpeg",
             "normal_class": c, "gamma": g, "draw": 0, "auroc": a, "classes": classes}
            for m, c, g, a in [("anomem", 0, 0.0, 0.9), ("deepsad", 0, 0.0, 0.6),
                               ("anomem", 1, 0.0, 0.8), ("anomem", 0, 0.05, 0.95)]]
    md = render(grid, rows)
    assert "| anomem | 90.0 (1/10 cl.) | 91.5 | — (0 cl.) | 97.1 |" in md
    assert "| deepsad | 60.0 (1/10 cl.) | 60.9 |" in md
    assert "4/40 cells finished" in md and "deepsad|cifar10_jpeg|1|0|0" in md


def test_a_method_left_out_of_a_gamma_is_na_there_and_blocks_no_mean() -> None:
    grid = load_grid({"name": "c", "datasets": ["cifar10_jpeg"], "gammas": [0.0, 0.05],
                      "methods": [{"name": "anomem"},
                                  {"name": "knn", "kind": "knn", "gammas": [0.0]}]})
    classes = [f"c{i}" for i in range(10)]
    rows = [{"cell": f"{m}|cifar10_jpeg|0|{g:g}|0", "method": m, "dataset": "cifar10_jpeg",
             "normal_class": 0, "gamma": g, "draw": 0, "auroc": a, "classes": classes}
            for m, g, a in [("anomem", 0.0, 0.9), ("knn", 0.0, 0.7), ("anomem", 0.05, 0.95)]]
    md = render(grid, rows)
    assert "| anomem | 90.0 (1/10 cl.) | — | 95.0 (1/10 cl.) | — |" in md
    assert "| knn | 70.0 (1/10 cl.) | — | n/a | — |" in md


def test_spread_over_draws_pairs_each_class_by_draw_not_by_file_order() -> None:
    # two processes (--reverse) append class 1's draws in the opposite order: draw 0 has
    # class means (0.6 + 0.8) / 2 = 0.7 and draw 1 (0.8 + 0.6) / 2 = 0.7, std 0; paired by
    # file order they would be 0.6 and 0.8, std 10 points.
    grid = load_grid({"name": "c", "datasets": ["cifar10_jpeg"], "gammas": [0.0],
                      "methods": [{"name": "anomem"}]})
    classes = [f"c{i}" for i in range(10)]
    rows = [{"cell": f"anomem|cifar10_jpeg|{c}|0|{d}", "method": "anomem",
             "dataset": "cifar10_jpeg", "normal_class": c, "gamma": 0.0, "draw": d, "auroc": a,
             "classes": classes}
            for c, d, a in [(0, 0, 0.6), (0, 1, 0.8), (1, 1, 0.6), (1, 0, 0.8)]]
    assert "| anomem | 70.0 ± 0.0 (2/10 cl.) | — |" in render(grid, rows)


def test_cli_runs_a_tiny_real_grid_and_writes_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text("name: tiny\npreset: digits\noverrides: {stage1_epochs: 1}\n"
                   "datasets: [digits]\nclasses: [3]\ngammas: [0.0]\n"
                   "methods:\n  - {name: deepsad, kind: deepsad, paper: deepsad}\n")
    res = tmp_path / "out" / "tiny.jsonl"
    assert main(["benchmark", str(cfg), "--results", str(res), "--no-progress"]) == 0
    row = json.loads(res.read_text().splitlines()[0])
    assert row["cell"] == "deepsad|digits|3|0|0" and row["config"]["stage1"]["epochs"] == 1
    assert "1/1 cells finished" in (tmp_path / "out" / "tiny_tables.md").read_text()
    assert main(["benchmark", str(cfg), "--shard", "2/1"]) == 2


def test_a_method_runs_only_at_its_own_gammas(grid: dict[str, Any], datasets: dict[str, Any],
                                              tmp_path: Path) -> None:
    grid["methods"].append({"name": "ss", "kind": "fake", "gammas": [0.05]})
    rows = run_grid(grid, tmp_path / "r.jsonl", (1, 2), progress=False, datasets=datasets)
    # shard 1/2 holds groups 1, 3, 5: (class 0, 0.05), (class 1, 0.05), (class 2, 0.05)
    assert len(rows) == 9 and sum(r["method"] == "ss" for r in rows) == 3
    assert {r["gamma"] for r in rows} == {0.05}


def test_versus_table_pairs_cells_and_signs_the_error_change() -> None:
    grid = load_grid({"name": "v", "gammas": [0.0],
                      "methods": [{"name": "anomem", "paper": "anomem"},
                                  {"name": "knn", "kind": "knn"}]})
    rows = [{"cell": f"{m}|d|{c}|0|0", "method": m, "dataset": "d", "normal_class": c,
             "gamma": 0.0, "draw": 0, "auroc": a, "classes": ["x", "y"]}
            for m, c, a in [("anomem", 0, 0.95), ("knn", 0, 0.90), ("knn", 1, 0.2)]]
    assert "| d | 0 | knn | 1 | 90.0 | 95.0 | +5.0 | -50% |" in render(grid, rows)


def test_sweep_points_and_png(tmp_path: Path) -> None:
    from anomem.reports.plots import sweep_plots, sweep_points

    grid = load_grid({"name": "s", "gammas": [0.0],
                      "methods": [{"name": f"m{x}", "kind": "anomem", "sweep": "memory_size",
                                   "x": x} for x in (16, 64)]})
    rows = [{"method": m, "gamma": 0.0, "normal_class": c, "auroc": a}
            for m, c, a in [("m16", 0, 0.6), ("m64", 0, 0.8), ("m64", 1, 0.2)]]
    assert sweep_points(grid, rows) == {"memory_size": {0.0: [(16.0, 60.0, 1), (64.0, 80.0, 1)]}}
    (png,) = sweep_plots(grid, rows, tmp_path)
    assert png.name == "s_memory_size.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_an_unknown_key_with_control_characters_is_a_one_line_error():
    # found by fuzzing: a key holding a line break split the CLI's one-line error
    with pytest.raises(ConfigError) as err:
        load_grid({"name": "g", "datasets": ["digits"], "methods": [{"name": "anomem"}],
                   "bad\u0085key\n": 1})
    assert "\n" not in str(err.value) and "\u0085" not in str(err.value)

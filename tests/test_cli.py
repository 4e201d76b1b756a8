"""The user's workflow on real image folders: fit -> score -> evaluate -> export, and its errors.

The end-to-end test runs the README's walkthrough commands, read from the
README itself, through the real command line in subprocesses, on scikit-learn's
digits written as image files (PNG, JPEG, BMP, TIFF; gray, RGB, RGBA, 16-bit;
nested folders).  The error tests call the same entry point in-process and
check that each bad input gives exit status 2 and one line naming the input.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomem import AnoMem, load_detector
from anomem.cli.main import COMMANDS, main
from anomem.data.folders import find_images, load_images
from anomem.export import TOLERANCE, score_scale, well_posed
from anomem.serialization import atomic_torch_save, safe_torch_load

ROOT = Path(__file__).resolve().parents[1]
MY_COMMANDS = ("fit", "score", "evaluate", "export")


def write_digits(folder: Path, images: np.ndarray, mixed: bool = False) -> None:
    """Save uint8 8x8 digits as image files; ``mixed`` varies format, mode, size and depth."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(images):
        kind = i % 6 if mixed else 0
        sub = folder / f"batch{i % 3}" if mixed else folder
        sub.mkdir(exist_ok=True)
        if kind == 0:
            Image.fromarray(d).save(sub / f"{i:04d}.png")
        elif kind == 1:
            Image.fromarray(np.kron(d, np.ones((4, 4), np.uint8))).convert("RGB").save(sub / f"{i:04d}.jpg")
        elif kind == 2:
            Image.fromarray(np.stack([d] * 3, -1)).save(sub / f"{i:04d}.bmp")
        elif kind == 3:
            Image.fromarray(np.stack([d, d, d, np.full_like(d, 255)], -1)).save(sub / f"{i:04d}.tif")
        elif kind == 4:
            Image.fromarray(d.astype(np.uint16) * 257).save(sub / f"{i:04d}.png")
        else:
            Image.fromarray(np.kron(d, np.ones((3, 2), np.uint8))).save(sub / f"{i:04d}.tiff")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, digits):
    ws = tmp_path_factory.mktemp("walkthrough")
    s = digits
    write_digits(ws / "train/good", s.x_train[s.y_train == 0][:70], mixed=True)
    for c in (1, 7):
        write_digits(ws / f"train/defects/digit{c}", s.x_train[s.y_train == c][:4])
    write_digits(ws / "test/good", s.x_test[s.y_test == 0][:30])
    for c in (3, 7):
        write_digits(ws / f"test/defects/digit{c}", s.x_test[s.y_test == c][:10])
    return ws


def walkthrough() -> list[list[str]]:
    """The 'anomem ...' command lines of the README's Walkthrough section, split into arguments."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Walkthrough\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    return [shlex.split(line)[1:] for line in section.splitlines() if line.startswith("anomem ")]


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "anomem.cli.main", *args], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_fit_score_evaluate_export_through_the_real_cli(workspace):
    ws = workspace
    fit, score, evaluate, export = walkthrough()
    assert [fit[0], score[0], evaluate[0], export[0]] == list(MY_COMMANDS)
    r = cli(ws, *fit)
    assert r.returncode == 0, r.stderr
    assert "semi-supervised model (one network) written to parts.anomem" in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("anomem fit: 70 normal images: 56 train, 14 held out for the threshold")
    assert "digit1: 4, digit7: 4" in first and "preset auto -> digits (images 8 px)" in first
    assert "the highest of 14 held-out normal scores" in r.stderr
    assert "warning: only 14 held-out normal image(s)" in r.stderr and "at least 19" in r.stderr
    assert "\r" not in r.stderr                     # no progress bars in redirected output
    log = list(csv.DictReader((ws / "parts.anomem.log.csv").open()))
    assert {row["stage"] for row in log} == {"1", "2"}
    assert all(np.isfinite(float(row["loss"])) for row in log)
    det = load_detector(ws / "parts.anomem")
    assert det.semi_supervised and isinstance(det.threshold_, float)

    # score: one CSV row per image, the Python model's scores, decisions at the stored threshold
    r = cli(ws, *score)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((ws / "scores.csv").open()))
    files = find_images(ws / "test/good") + find_images(ws / "test/defects")
    assert [row["path"] for row in rows] == [str(p.relative_to(ws)) for p in files]
    images = load_images(files, 16).images
    scores = det.decision_function(images)
    # the CSV keeps 6 significant digits (%.6g): relative rounding <= 5e-6 of each score;
    # atol: float32 rounding of a standardised O(1) score that lies near 0
    np.testing.assert_allclose([float(row["score"]) for row in rows], scores, rtol=1e-5, atol=1e-6)
    assert [row["decision"] for row in rows] == ["anomaly" if s > det.threshold_ else "normal"
                                                 for s in scores]
    heat = sorted((ws / "heatmaps").rglob("*.png"))   # the input tree, mirrored
    assert sorted(p.relative_to(ws / "heatmaps").with_suffix("") for p in heat) == sorted(
        Path(p.relative_to(ws / "test").with_suffix("")) for p in files)
    with Image.open(heat[0]) as im:
        assert im.format == "PNG" and min(im.size) >= 128

    # evaluate: metrics agree with the scores, report and figures are written
    r = cli(ws, *evaluate)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((ws / "report/metrics.json").read_text())
    truth = np.r_[np.zeros(30), np.ones(20)]
    # a ratio of pair counts over the same ranking of the same scores: float64 rounding only
    assert metrics["auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-9)
    assert f"AUROC          {metrics['auroc']:.4f}" in r.stdout
    assert set(metrics["per_type"]) == {"digit3", "digit7"}
    report = (ws / "report/report.md").read_text()
    for png in ("roc.png", "histogram.png", "top_anomalies.png"):
        assert f"]({png})" in report
        with Image.open(ws / "report" / png) as im:
            assert im.format == "PNG"
    assert len(list(csv.DictReader((ws / "report/scores.csv").open()))) == 50

    # export: the ONNX file scores the same images like the Python model
    r = cli(ws, *export)
    assert r.returncode == 0, r.stderr
    sess = ort.InferenceSession(str(ws / "parts.onnx"), providers=["CPUExecutionProvider"])
    onnx_scores = sess.run(None, {"images": images.float().div(255).numpy()})[0]
    # the bound 'anomem export' itself checks: 1e-4 of the scores' scale (float32 rounding), on
    # the images that no retrieval tie leaves to rounding (well_posed)
    keep = well_posed(det, images)
    assert keep.sum() >= len(keep) // 2
    np.testing.assert_allclose(onnx_scores[keep], scores[keep], rtol=0,
                               atol=TOLERANCE * score_scale(det, images))


# ---------------------------------------------------------------- help and errors (in-process)
def test_help_reads_like_a_manual(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    assert all(name in top for name in COMMANDS)
    for name in MY_COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert f"usage: anomem {name}" in text and "examples:" in text and f"anomem {name} " in text
        assert "``" not in text


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, digits):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("model") / "m.anomem"
    AnoMem("digits", stage1_epochs=1).fit(digits.x_train[digits.y_train == 0][:40]).save(path)
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"anomem {argv[0]}: error: ") and "\n" not in err, err
    return err


def test_missing_and_empty_folders(tmp_path, capsys, model_file):
    missing = tmp_path / "no_such_folder"
    assert f"normal folder '{missing}' does not exist" in one_line_error(capsys, ["fit", str(missing)])
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, ["fit", str(tmp_path / "empty")])
    assert "empty" in err and "holds no image files" in err
    err = one_line_error(capsys, ["evaluate", str(model_file), "--normal", str(tmp_path / "empty"),
                                  "--anomalies", str(tmp_path / "empty")])
    assert "holds no image files" in err
    assert "does not exist" in one_line_error(capsys, ["score", str(model_file), str(missing)])


def test_unreadable_and_truncated_images_fail_or_are_skipped(tmp_path, capsys, model_file, digits):
    write_digits(tmp_path / "imgs", digits.x_test[:3])
    good = find_images(tmp_path / "imgs")
    cut = tmp_path / "imgs" / "cut.png"
    data = (tmp_path / "imgs" / "0000.png").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "imgs" / "text.jpg").write_text("not a picture")
    err = one_line_error(capsys, ["score", str(model_file), str(tmp_path / "imgs"), "-q"])
    assert str(cut) in err and "truncated" in err and "--bad-images skip" in err
    err = one_line_error(capsys, ["score", str(model_file), str(tmp_path / "imgs" / "text.jpg"), "-q"])
    assert "text.jpg" in err and "cannot be read" in err
    out = tmp_path / "s.csv"
    assert main(["score", str(model_file), str(tmp_path / "imgs"), "-o", str(out), "--bad-images",
                 "skip", "-q"]) == 0
    warning = capsys.readouterr().err
    assert "skipped 2 image file(s)" in warning and str(cut) in warning and "text.jpg" in warning
    assert [r["path"] for r in csv.DictReader(out.open())] == [str(p) for p in good]


def test_sizes_and_channels_the_model_cannot_take(tmp_path, capsys, model_file, digits):
    lab = tmp_path / "lab.tif"
    Image.new("LAB", (16, 16)).save(lab)
    err = one_line_error(capsys, ["score", str(model_file), str(lab), "-q"])
    assert "lab.tif" in err and "colour mode LAB" in err
    line = tmp_path / "line.png"
    Image.fromarray(digits.x_test[0][:1]).save(line)
    err = one_line_error(capsys, ["score", str(model_file), str(line), "-q"])
    assert "line.png" in err and "8x1 px" in err


def test_model_file_from_another_version_or_not_a_model(tmp_path, capsys, model_file, digits):
    blob = safe_torch_load(model_file)
    old = tmp_path / "old.anomem"
    atomic_torch_save({**blob, "version": 99, "anomem_version": "9.9.0"}, old)
    Image.fromarray(digits.x_test[0]).save(tmp_path / "x.png")
    for argv in (["score", str(old), str(tmp_path / "x.png")], ["export", str(old), "--format", "onnx"],
                 ["evaluate", str(old), "--normal", str(tmp_path), "--anomalies", str(tmp_path)]):
        err = one_line_error(capsys, argv)
        assert "old.anomem" in err and "version 99" in err and "re-fit" in err
    junk = tmp_path / "junk.anomem"
    junk.write_text("this is not a model")
    err = one_line_error(capsys, ["score", str(junk), str(tmp_path)])
    assert "'" + str(junk) + "' is a text file" in err and "not a model file" in err and "anomem fit" in err


def test_bad_config_override_and_explicit_threshold(tmp_path, capsys, model_file, digits):
    write_digits(tmp_path / "good", digits.x_train[:4])
    err = one_line_error(capsys, ["fit", str(tmp_path / "good"), "--set", "stage1_epoch=2", "-q"])
    assert "unknown config key(s) 'stage1_epoch'" in err
    out = tmp_path / "s.csv"
    assert main(["score", str(model_file), str(tmp_path / "good"), "-o", str(out), "-q",
                 "--threshold=-1e9"]) == 0
    assert {r["decision"] for r in csv.DictReader(out.open())} == {"anomaly"}


def test_fit_with_yaml_config_overrides_explicit_threshold_and_checkpoints(tmp_path, capsys, digits):
    write_digits(tmp_path / "good", digits.x_train[digits.y_train == 4][:24])
    cfg = tmp_path / "my.yaml"
    cfg.write_text("preset: digits\nstage1_epochs: 3\nmem_sizes: [8, 4]\n")
    model = tmp_path / "m.anomem"
    assert main(["fit", str(tmp_path / "good"), "--config", str(cfg), "--set", "stage1_epochs=1",
                 "--threshold", "1.5", "--checkpoint-dir", str(tmp_path / "ckpt"), "-o", str(model),
                 "--members", "1", "-q"]) == 0
    assert "threshold 1.5 (set explicitly with --threshold)" in capsys.readouterr().err
    det = AnoMem.load(model)
    assert det.threshold_ == 1.5
    assert det.config_.stage1.epochs == 1 and det.config_.memory.sizes == (8, 4)  # --set beats the YAML
    assert (tmp_path / "ckpt" / "stage1.ckpt").is_file()
    rows = list(csv.DictReader((tmp_path / "m.anomem.log.csv").open()))
    assert len(rows) == 1 and rows[0]["stage"] == "1"  # 20 training images, batch 32: one step


def test_os_errors_and_bad_thread_counts_are_clean_cli_errors(tmp_path, capsys):
    # found by fuzzing: an output path that is a folder, and --threads below 1
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndatasets: [digits]\nmethods: [{name: anomem}]\n")
    assert main(["benchmark", str(grid), "--threads", "-2"]) == 2
    assert "--threads must be a positive" in capsys.readouterr().err
    folder = tmp_path / "normal"
    write_digits(folder, np.zeros((4, 8, 8), np.uint8))
    assert main(["fit", str(folder), "-o", str(tmp_path), "--set", "stage1_epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err

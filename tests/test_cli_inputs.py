"""What the command line reads and writes on a user's own image sets: list files, overlapping
folders, the training-free reference beside the model's AUROC, mirrored heatmap names."""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from anomem import load_detector
from anomem.baselines.pixel_knn import leave_one_out_scores
from anomem.cli.evaluate import verdict
from anomem.cli.main import main
from anomem.data.folders import load_images
from anomem.data.sources import Entry, mirror_names, read_list
from anomem.reports.metrics import auroc

FIT = ["--config", "digits", "--set", "stage1_epochs=1", "--set", "width=4", "--set", "stage2_epochs=1",
       "-q"]


def write(folder: Path, images: np.ndarray, suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}{suffix}" for i in range(len(images))]
    for p, im in zip(paths, images, strict=True):
        Image.fromarray(im).save(p)
    return paths


@pytest.fixture(scope="module")
def ws(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("inputs")
    s = digits
    write(root / "train/good", s.x_train[s.y_train == 0][:40])
    write(root / "train/defects/crazing", s.x_train[s.y_train == 1][:4])
    write(root / "test/good", s.x_test[s.y_test == 0][:20])
    write(root / "test/defects/crazing", s.x_test[s.y_test == 3][:6])
    write(root / "test/defects/crazing", s.x_test[s.y_test == 7][:2], ".jpg")   # 0000.jpg beside 0000.png
    return root


@pytest.fixture(scope="module")
def model(ws):
    path = ws / "m.anomem"
    assert main(["fit", str(ws / "train/good"), *FIT, "-o", str(path)]) == 0
    return path


def error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"anomem {argv[0]}: error: ") and "\n" not in err, err
    return err


def test_an_image_in_both_sets_is_an_error_naming_it_and_the_fix(ws, capsys, model):
    # the user's command: the defects folder lies inside the normal folder
    err = error(capsys, ["fit", str(ws / "train"), "--anomalies", str(ws / "train/defects"), *FIT])
    assert "4 image(s) are given both as anomalies and as normal images" in err
    assert str(ws / "train/defects/crazing/0000.png") in err and "move the anomalies out" in err
    # the same bytes under another name count too, in evaluate as in fit
    dup = ws / "dup"
    dup.mkdir()
    (dup / "copy.png").write_bytes((ws / "test/good/0003.png").read_bytes())
    err = error(capsys, ["evaluate", str(model), "--normal", str(ws / "test/good"), "--anomalies",
                         str(dup)])
    assert f"'{dup / 'copy.png'}' (same content as '{ws / 'test/good/0003.png'}')" in err


def test_fit_evaluate_and_score_take_list_files(ws, capsys, monkeypatch):
    lists = ws / "lists"
    lists.mkdir()
    rows = [("../train/good/" + f"{i:04d}.png", "normal" if i % 2 else "0") for i in range(30)]
    rows += [("../train/defects/crazing/0000.png", "anomaly"), ("../train/defects/crazing/0001.png", "1")]
    with (lists / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    (lists / "new.txt").write_text("# new parts\n../test/good/0000.png\n\n../test/good/0001.png\n")
    monkeypatch.chdir(ws / "test")                # relative paths are the list's, not the cwd's
    out = ws / "list.anomem"
    assert main(["fit", str(lists / "train.csv"), *FIT, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "30 normal images: 24 train, 6 held out" in err and "crazing: 2" in err
    assert load_detector(out).semi_supervised
    assert main(["score", str(out), str(lists / "new.txt"), "-o", str(ws / "s.csv"), "-q"]) == 0
    got = [r["path"] for r in csv.DictReader((ws / "s.csv").open())]
    assert got == [str(lists / "../test/good/0000.png"), str(lists / "../test/good/0001.png")]
    labelled = lists / "test.csv"
    labelled.write_text("path,label\n" + "".join(f"../test/good/{i:04d}.png,0\n" for i in range(10))
                        + "../test/defects/crazing/0000.png,1\n../test/defects/crazing/0001.png,1\n")
    assert main(["evaluate", str(out), str(labelled), "--report", str(ws / "r"), "-q"]) == 0
    assert "10 normal, 2 anomalous images" in capsys.readouterr().out


def test_list_errors_name_the_file_line_and_fix(tmp_path, capsys, ws):
    good = ws / "train/good/0000.png"
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,label\n{good},1\n{good},maybe\n")
    assert "label 'maybe' (line 3) is not one of 0, 1, normal, anomaly" in error(capsys, ["fit", str(bad)])
    bad.write_text(f"path\n{good}\nmissing.png\n")
    err = error(capsys, ["fit", str(bad)])
    assert "1 listed image(s) do not exist: 'missing.png' (line 3)" in err
    assert f"read from the list's folder {str(tmp_path)!r}" in err
    bad.write_text("path,label\n")
    assert "names no images" in error(capsys, ["fit", str(bad)])
    bad.write_text("file,label\na.png,0\n")
    assert "needs a header row with a 'path' column" in error(capsys, ["fit", str(bad)])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert "names no images" in error(capsys, ["score", str(ws / "m.anomem"), str(empty)])
    unl = tmp_path / "unl.csv"
    unl.write_text(f"path,label\n{good},\n")
    err = error(capsys, ["evaluate", str(ws / "m.anomem"), str(unl)])
    assert "have no label" in err


def test_evaluate_shows_the_reference_beside_the_model(ws, capsys, model):
    report = ws / "report"
    assert main(["evaluate", str(model), "--normal", str(ws / "test/good"), "--anomalies",
                 str(ws / "test/defects"), "--report", str(report), "--format", "md", "-q"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((report / "metrics.json").read_text())
    files = sorted((ws / "test/good").glob("*.png")) + sorted((ws / "test/defects").rglob("*.*"))
    labels = np.r_[np.zeros(20), np.ones(8)].astype(int)
    images = load_images(files, load_detector(model).config_.backbone.image_size).images
    expected = auroc(labels, leave_one_out_scores(images, labels, size=16))
    assert metrics["reference_auroc"] == pytest.approx(expected, abs=1e-12)
    assert f"(reference {expected:.4f}: PixelKNN" in out
    text = (report / "report.md").read_text()
    assert f"| AUROC of the reference: PixelKNN, the nearest normal image on 16x16 pixels, no training " \
           f"| {expected:.4f} |" in text
    for note in verdict(metrics["auroc"], expected):        # whatever this tiny model scored
        assert f"warning: {note}" in out and f"Warning: {note}." in text
    assert verdict(0.9, 0.8) == []
    assert "below the reference's 0.9000" in verdict(0.7, 0.9)[0]
    low = verdict(0.4, 0.6)
    assert len(low) == 2 and "below 0.5" in low[0] and "not swapped" in low[0]
    both = verdict(0.4, 0.3)
    assert len(both) == 2 and "reference's AUROC 0.3000 is below 0.5 (inverted)" in both[1]
    inverted = verdict(0.8, 0.7, [("crazing", 6, 0.9, 1.0), ("scratch", 3, 0.25, 0.0)])
    assert inverted == [next(n for n in inverted if "'scratch'" in n)]
    assert "AUROC 0.2500 is below 0.5" in inverted[0] and "these 3 anomalies" in inverted[0]


def test_heatmaps_mirror_the_input_tree_without_overwriting(ws, capsys, model):
    heat = ws / "heat"
    assert main(["score", str(model), str(ws / "test/good"), str(ws / "test/defects"),
                 str(ws / "test/defects/crazing/0001.png"), "--heatmaps", str(heat), "-q"]) == 0
    written = sorted(p.relative_to(heat).as_posix() for p in heat.rglob("*.png"))
    assert len(written) == 20 + 8 + 1
    assert "good/0019.png" in written and "defects/crazing/0005.png" in written
    # 0000.jpg comes first (sorted), keeps the plain name; 0000.png keeps its extension
    assert "defects/crazing/0000.png" in written and "defects/crazing/0000_png.png" in written
    assert "0001.png" in written                                   # a single file: its name
    entries = [Entry(Path(p), PurePosixPath(p)) for p in ("a/x.png", "a/x.jpg", "A/X.tif", "a/x.jpg")]
    assert mirror_names(entries) == ["a/x", "a/x_jpg", "A/X_tif", "a/x_jpg-2"]
    assert [e.name.as_posix() for e in read_list(_txt(ws))] == ["train/good/0000.png", "0000.png"]


def _txt(ws: Path) -> Path:
    """A list naming one image below its folder and one outside it (absolute path)."""
    lst = ws / "mixed.txt"
    lst.write_text(f"train/good/0000.png\n{ws.parent / 'outside' / '0000.png'}\n")
    write(ws.parent / "outside", np.zeros((1, 8, 8), np.uint8))
    return lst


def test_swapped_arguments_say_what_was_found_and_the_order(ws, capsys, model):
    good, csv_list = str(ws / "test/good"), ws / "swapped.csv"
    csv_list.write_text("path,label\ntest/good/0000.png,0\n")
    err = error(capsys, ["score", good, str(model)])
    assert f"MODEL '{good}' is a folder, not a model file; '{model}' looks like the model file" in err
    assert "anomem score MODEL PATH" in err
    err = error(capsys, ["evaluate", str(csv_list), str(model)])
    assert "is a text file" in err and f"'{model}' looks like the model file" in err
    err = error(capsys, ["score", str(model), str(model)])
    assert f"PATH '{model}' is a model file, not images" in err
    err = error(capsys, ["fit", str(model), "-q"])
    assert f"NORMAL '{model}' is a model file" in err and "anomem fit NORMAL" in err
    err = error(capsys, ["export", good, "--format", "onnx"])
    assert "is a folder, not a model file" in err and "written by 'anomem fit'" in err
    image = next((ws / "test/good").glob("*.png"))
    assert "is an image file (PNG), not a model file" in error(capsys, ["score", str(image), good])


def test_the_demo_shows_a_spread_only_over_several_seeds():
    from anomem.cli.demo import mean_row
    one = mean_row([[0.9], [0.8]])
    assert "±" not in one and one.split() == ["mean", "90.0", "80.0"]
    several = mean_row([[0.9, 0.8], [0.7, 0.7]])
    assert several.split() == ["mean", "85.0", "±", "5.0", "70.0", "±", "0.0"]
    assert len(one) == len(several)                                   # columns stay aligned


def test_make_test_says_why_tests_were_skipped():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "-m pytest -q -rs" in makefile

"""'anomem fit --masks DIR': the anomalies' defect masks from files, for the position head."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import AnoMem
from anomem.cli.main import main
from anomem.data.masks import candidates, mask_path
from anomem.data.sources import Entry

HEAD = ["--config", "digits", "--set", "stage1.epochs=1", "--set", "scoring.heatmap_reader=head",
        "--members", "1", "-q"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, digits) -> dict[str, Path]:
    """good/ (40 zeros), defects/square/ (8 zeros, a 3 x 3 square inverted) and their masks in
    ground_truth/square/, MVTec-style (``<name>_mask.png``), one anomaly without a mask."""
    root = tmp_path_factory.mktemp("masks")
    zeros = digits.x_train[digits.y_train == 0]
    for sub in ("good", "defects/square", "ground_truth/square"):
        (root / sub).mkdir(parents=True)
    for i, img in enumerate(zeros[:40]):
        Image.fromarray(img).save(root / "good" / f"{i:03d}.png")
    for i, img in enumerate(zeros[40:48]):
        mask = np.zeros((8, 8), dtype=np.uint8)
        mask[2 + i % 3:5 + i % 3, 1 + i % 4:4 + i % 4] = 255
        Image.fromarray(np.where(mask > 0, 255 - img, img).astype(np.uint8)).save(
            root / "defects" / "square" / f"{i:03d}.png")
        if i:
            Image.fromarray(mask).save(root / "ground_truth" / "square" / f"{i:03d}_mask.png")
    return {k: root / k for k in ("good", "defects", "ground_truth")} | {"root": root}


def test_a_mask_is_found_beside_its_anomalys_place(tmp_path):
    (tmp_path / "crack").mkdir()
    (tmp_path / "crack" / "007_mask.png").write_bytes(b"")
    entry = Entry(Path("defects/crack/007.png"), PurePosixPath("defects/crack/007.png"), None, "crack")
    assert mask_path(tmp_path, entry) == tmp_path / "crack" / "007_mask.png"
    assert mask_path(tmp_path / "crack", entry) is None
    assert PurePosixPath("crack/007.tif") in candidates(entry.name)


def test_fit_reads_the_masks_and_the_head_learns_from_them(folders, tmp_path, capsys):
    args = [str(folders["good"]), "--anomalies", str(folders["defects"])]
    assert main(["fit", *args, "--masks", str(folders["ground_truth"]), *HEAD,
                 "-o", str(tmp_path / "masked.anomem")]) == 0
    assert "anomalies square: 8; masks for 7" in capsys.readouterr().err
    assert main(["fit", *args, *HEAD, "-o", str(tmp_path / "plain.anomem")]) == 0
    heads = [AnoMem.load(tmp_path / f"{n}.anomem").network_.position_head for n in ("masked", "plain")]
    assert heads[0] is not None
    assert not all(torch.equal(a, b) for a, b in zip(heads[0].state_dict().values(),
                                                      heads[1].state_dict().values()))


@pytest.mark.parametrize("case, message", [
    ("no anomalies", "--masks gives the masks of labelled anomalies; add --anomalies SRC"),
    ("not a folder", "is not a folder"),
    ("no mask found", "holds no mask of any of the 8 anomalies; the mask of defects/square/000.png "
                      "would be e.g."),
    ("wrong size", "is 8x4 px, its image"),
    ("memory reader", "scoring.heatmap_reader=head"),
])
def test_bad_masks_are_one_line_errors(folders, tmp_path, capsys, case, message):
    masks, anomalies, head = folders["ground_truth"], ["--anomalies", str(folders["defects"])], HEAD
    if case == "no anomalies":
        anomalies = []
    elif case == "not a folder":
        masks = tmp_path / "missing"
    elif case == "no mask found":
        masks = tmp_path
    elif case == "wrong size":
        (tmp_path / "square").mkdir()
        Image.fromarray(np.zeros((4, 8), dtype=np.uint8)).save(tmp_path / "square" / "003.png")
        masks = tmp_path
    else:
        head = ["--config", "digits", "--set", "stage1.epochs=1", "--members", "1", "-q"]
    rc = main(["fit", str(folders["good"]), *anomalies, "--masks", str(masks), *head,
               "-o", str(tmp_path / "m.anomem")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err

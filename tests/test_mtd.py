"""The Magnetic Tile Defects reader and its seeded protocols, on the real archive.

The reader's mask rules are also checked on a tiny archive written here in the
same layout, whose pixel values are known.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from anomem import InvalidInputError
from anomem.data.locate import MAGNETIC_TILES, data_root
from anomem.data.mtd import MTD_TYPES, read_mtd, split_mtd

EMPTY_UNEVEN = {"MT_Uneven/exp3_num_45042", "MT_Uneven/exp4_num_124690",
                "MT_Uneven/exp4_num_352527", "MT_Uneven/exp4_num_45057"}
COUNTS = {"Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103}


@pytest.fixture(scope="module")
def mtd():
    root = data_root()
    if root is None or not (root / MAGNETIC_TILES).is_file():
        pytest.skip(f"{MAGNETIC_TILES} is not in ../shared/data (or ANOMEM_DATA); the MTD tests "
                    f"need the real archive")
    return read_mtd(side=32)


def _add(tf: tarfile.TarFile, name: str, array: np.ndarray, fmt: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    info = tarfile.TarInfo(name)
    info.size = len(buf.getvalue())
    tf.addfile(info, io.BytesIO(buf.getvalue()))


def test_real_archive_counts_types_and_empty_masks(mtd):
    assert mtd.images.shape == (1344, 32, 32) and mtd.images.dtype == np.uint8
    assert mtd.masks.shape == (1344, 32, 32) and mtd.masks.dtype == bool
    assert int((mtd.types < 0).sum()) == 952
    assert {t: int((mtd.types == i).sum()) for i, t in enumerate(MTD_TYPES)} == COUNTS
    assert not mtd.masks[mtd.types < 0].any()
    no_truth = {n for n, t, h in zip(mtd.names, mtd.types, mtd.has_mask, strict=True) if t >= 0 and not h}
    assert no_truth == EMPTY_UNEVEN
    assert int((~mtd.pixel_valid).sum()) == 4
    defects = mtd.types >= 0
    covered = mtd.masks[defects].reshape(int(defects.sum()), -1).mean(1)
    assert 0.01 < covered.mean() < 0.3          # defects cover a visible part of the tile


def test_one_class_split_is_seeded_and_disjoint(mtd):
    a, b, c = split_mtd(mtd, 0.7, seed=0), split_mtd(mtd, 0.7, seed=0), split_mtd(mtd, 0.7, seed=1)
    assert a.train.names == b.train.names and a.train.names != c.train.names
    assert len(a.train) == 666 and a.train.labels.sum() == 0
    assert a.test.labels.sum() == 392 and int((a.test.types < 0).sum()) == 952 - 666
    assert not set(a.train.names) & set(a.test.names)
    assert len(set(a.train.names) | set(a.test.names)) == 1344


def test_semi_supervised_and_cross_type_share_the_labelled_draw(mtd):
    oc = split_mtd(mtd, 0.7, seed=0)
    ss = split_mtd(mtd, 0.7, seed=0, labelled_per_type=3)
    assert [int((ss.train.types == t).sum()) for t in range(5)] == [3] * 5
    assert not set(ss.train.names) & set(ss.test.names)
    assert [n for n in ss.train.names if n.startswith("MT_Free")] == list(oc.train.names)
    for held in ("Crack", "Uneven"):
        ct = split_mtd(mtd, 0.7, seed=0, labelled_per_type=3, held_out_type=held)
        h = MTD_TYPES.index(held)
        assert not (ct.train.types == h).any()
        assert set(np.unique(ct.test.types)) == {-1, h}
        assert int((ct.test.types == h).sum()) == COUNTS[held]
        labelled = {n for n in ct.train.names if not n.startswith("MT_Free")}
        assert labelled == {n for n, t in zip(ss.train.names, ss.train.types, strict=True)
                            if t >= 0 and t != h}


def test_split_errors_name_the_argument(mtd):
    with pytest.raises(InvalidInputError, match="held_out_type"):
        split_mtd(mtd, held_out_type="Scratch")
    with pytest.raises(InvalidInputError, match="labelled_per_type"):
        split_mtd(mtd, labelled_per_type=32)                 # Fray has 32: none left to test
    with pytest.raises(InvalidInputError, match="train_fraction"):
        split_mtd(mtd, train_fraction=1.0)


def test_masks_binarised_above_127_and_empty_masks_flagged(tmp_path):
    img = np.full((8, 8), 90, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[:2, :] = 200          # defect
    mask[2:4, :] = 127         # antialiased edge at the limit: background
    mask[4:6, :] = 128         # just above: defect
    path = tmp_path / "mtd.tar"
    with tarfile.open(path, "w") as tf:
        _add(tf, "MT_Crack/Imgs/a.jpg", img, "JPEG")
        _add(tf, "MT_Crack/Imgs/a.png", mask, "PNG")
        _add(tf, "MT_Uneven/Imgs/b.jpg", img, "JPEG")
        _add(tf, "MT_Uneven/Imgs/b.png", np.zeros((8, 8), np.uint8), "PNG")
        _add(tf, "MT_Free/Imgs/c.jpg", img, "JPEG")
        _add(tf, "MT_Free/Imgs/c.png", np.zeros((8, 8), np.uint8), "PNG")
    data = read_mtd(path, side=8)
    assert data.names == ("MT_Crack/a", "MT_Free/c", "MT_Uneven/b")
    np.testing.assert_array_equal(data.types, [MTD_TYPES.index("Crack"), -1, MTD_TYPES.index("Uneven")])
    np.testing.assert_array_equal(data.masks[0], mask > 127)
    np.testing.assert_array_equal(data.has_mask, [True, False, False])
    np.testing.assert_array_equal(data.pixel_valid, [True, True, False])
    np.testing.assert_array_equal(data.labels, [1, 0, 1])
    assert abs(int(data.images[1].mean()) - 90) <= 2


def test_reader_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_mtd(tmp_path / "missing.tar.gz")
    path = tmp_path / "half.tar"
    with tarfile.open(path, "w") as tf:
        _add(tf, "MT_Free/Imgs/a.jpg", np.zeros((8, 8), np.uint8), "JPEG")
    with pytest.raises(InvalidInputError, match="lack their image or mask"):
        read_mtd(path, side=8)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(InvalidInputError, match="not a readable tar"):
        read_mtd(bad, side=8)

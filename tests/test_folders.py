"""Image files on disk: discovery, every common format and mode, bad files, class folders."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import InvalidInputError
from anomem.data.convert import to_image_tensor
from anomem.data.folders import (
    collect_images,
    find_images,
    format_skipped,
    group_name,
    load_images,
    read_class_folders,
    read_image,
)
from anomem.data.locate import CIFAR10_JPEG, data_root


@pytest.fixture(scope="module")
def scans(digits):
    return digits.x_train[:12]  # real uint8 (12, 8, 8) scans


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def truncated(path: Path, digit: np.ndarray) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.kron(digit, np.ones((8, 8), np.uint8))).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def test_find_images_at_any_depth_sorted_skipping_other_files(tmp_path, scans):
    for p in ("b.png", "a/x.JPG", "a/deep/er/y.bmp", "z.tiff", "w.tif", "v.jpeg"):
        save(tmp_path / p, np.stack([scans[0]] * 3, -1))
    (tmp_path / "notes.txt").write_text("not an image")
    save(tmp_path / ".hidden.png", scans[0])
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/deep/er/y.bmp", "a/x.JPG", "b.png", "v.jpeg", "w.tif", "z.tiff"]
    assert collect_images([tmp_path / "b.png", tmp_path / "a"]) == [
        tmp_path / "b.png", tmp_path / "a/deep/er/y.bmp", tmp_path / "a/x.JPG"]
    assert group_name(tmp_path, tmp_path / "a/deep/er/y.bmp") == "a"
    assert group_name(tmp_path, tmp_path / "b.png") == tmp_path.name


def test_missing_file_as_folder_and_empty_folder_errors(tmp_path, scans):
    with pytest.raises(InvalidInputError, match="normal folder .*nope.* does not exist"):
        find_images(tmp_path / "nope", "normal")
    f = save(tmp_path / "one.png", scans[0])
    with pytest.raises(InvalidInputError, match="is a file, not a folder"):
        find_images(f, "normal")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="holds no image files"):
        find_images(tmp_path / "empty", "normal")
    with pytest.raises(InvalidInputError, match="does not exist"):
        collect_images([tmp_path / "gone.png"])


def test_lossless_files_decode_to_the_same_tensor_as_the_arrays(tmp_path, scans):
    paths = [save(tmp_path / f"{i}.{ext}", d) for i, (d, ext) in
             enumerate(zip(scans[:4], ("png", "bmp", "tif", "png"), strict=True))]
    loaded = load_images(paths, 16)
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (4, 3, 16, 16)
    assert loaded.paths == paths and loaded.skipped == []
    assert np.array_equal(loaded.images.numpy(), to_image_tensor(scans[:4, None], 16).numpy())


def test_modes_and_sizes_gray_rgb_rgba_palette_16bit_float(tmp_path, scans):
    d = scans[1]
    big = np.kron(d, np.ones((5, 3), np.uint8))  # 40 x 24, not square
    rgb = np.stack([d, 255 - d, np.full_like(d, 7)], -1)
    rgba = np.concatenate([rgb, np.zeros_like(d)[..., None]], -1)  # fully transparent
    files = {
        "gray.png": (d, None), "big.jpg": (np.stack([big] * 3, -1), None), "rgb.png": (rgb, None),
        "rgba.png": (rgba, None), "g16.png": (d.astype(np.uint16) * 257, None),
        "f.tif": (d.astype(np.float32) / 255, "F"),
    }
    paths = [save(tmp_path / n, a, m) for n, (a, m) in files.items()]
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "pal.png")
    paths.append(tmp_path / "pal.png")
    x = load_images(paths, 8).images.numpy()
    assert x.shape == (7, 3, 8, 8)
    gray = np.stack([d] * 3)
    assert np.array_equal(x[0], gray)
    assert np.array_equal(x[2], rgb.transpose(2, 0, 1)) and np.array_equal(x[3], x[2])  # alpha dropped
    assert np.array_equal(x[4], gray)  # 16-bit scaled down exactly
    assert np.abs(x[5].astype(int) - gray).max() <= 1  # float in [0, 1]
    assert np.abs(x[1].astype(int) - gray).mean() < 25  # JPEG of a resized copy: close, not equal
    assert np.abs(x[6].astype(int) - rgb.transpose(2, 0, 1)).mean() < 20  # palette quantised
    assert read_image(tmp_path / "big.jpg").shape == (40, 24, 3)


def test_truncated_and_non_image_files_fail_with_the_file_name_or_are_skipped(tmp_path, scans):
    good = save(tmp_path / "good.png", scans[2])
    bad_png = truncated(tmp_path / "cut.png", scans[3])
    jpg = io.BytesIO()
    Image.fromarray(np.kron(scans[4], np.ones((8, 8), np.uint8))).save(jpg, format="JPEG")
    bad_jpg = tmp_path / "cut.jpg"
    bad_jpg.write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    text = tmp_path / "text.png"
    text.write_text("hello")
    for bad in (bad_png, bad_jpg, text):
        with pytest.raises(InvalidInputError) as e:
            load_images([good, bad], 8)
        msg = str(e.value)
        assert str(bad) in msg and "\n" not in msg and "--bad-images skip" in msg
    assert "truncated" in str(pytest.raises(InvalidInputError, read_image, bad_jpg).value)
    loaded = load_images([good, bad_png, bad_jpg, text], 8, on_error="skip")
    assert loaded.paths == [good] and [p for p, _ in loaded.skipped] == [bad_png, bad_jpg, text]
    listing = format_skipped(loaded.skipped)
    assert listing.startswith("skipped 3 image file(s)") and all(str(p) in listing for p in
                                                                 (bad_png, bad_jpg, text))
    with pytest.raises(InvalidInputError, match="none of the 2 images could be read"):
        load_images([bad_png, text], 8, on_error="skip")


def test_sizes_and_colour_modes_the_model_cannot_take(tmp_path, monkeypatch, scans):
    lab = tmp_path / "lab.tif"
    Image.new("LAB", (8, 8)).save(lab)
    with pytest.raises(InvalidInputError, match=r"lab\.tif.*colour mode LAB.*grayscale, RGB or RGBA"):
        read_image(lab)
    line = save(tmp_path / "line.png", scans[0][:1])  # 8 x 1 px
    with pytest.raises(InvalidInputError, match=r"line\.png.*8x1 px.*at least 2 px"):
        read_image(line)
    huge = save(tmp_path / "huge.png", np.kron(scans[0], np.ones((8, 8), np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000
    with pytest.raises(InvalidInputError, match=r"huge\.png.*too large.*downscale"):
        read_image(huge)


def test_read_class_folders(tmp_path, scans):
    for k, name in enumerate(("zero", "one", "two")):
        for i in range(3):
            save(tmp_path / name / "nested" / f"{i}.png", scans[3 * k + i])
    x, y, classes = read_class_folders(tmp_path)
    assert classes == ("one", "two", "zero")  # sorted sub-folder names
    assert x.shape == (9, 8, 8, 3) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert np.array_equal(x[6:, ..., 0], scans[:3])  # "zero" holds scans[0..2]
    xs, _, _ = read_class_folders(tmp_path, size=4)
    assert xs.shape == (9, 4, 4, 3)
    save(tmp_path / "two" / "wide.png", np.hstack([scans[0], scans[1]]))
    with pytest.raises(InvalidInputError, match="mixes image sizes.*size="):
        read_class_folders(tmp_path)
    (tmp_path / "two" / "wide.png").unlink()
    truncated(tmp_path / "one" / "cut.png", scans[0])
    with pytest.raises(InvalidInputError, match="cut.png"):
        read_class_folders(tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        x2, y2, _ = read_class_folders(tmp_path, on_error="skip")
    assert len(x2) == 9 and any("cut.png" in str(m.message) for m in w)


def test_cifar10_jpegs_as_class_folders(tmp_path):
    root = data_root()
    if root is None or not (root / CIFAR10_JPEG).is_file():
        pytest.skip(f"{CIFAR10_JPEG} not found in ../shared/data (or $ANOMEM_DATA)")
    want: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(root / CIFAR10_JPEG) as tf:
        for m in tf:
            parts = m.name.strip("./").split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == "test" and parts[1] in ("cat", "ship"):
                want.setdefault(parts[1], []).append((parts[2], tf.extractfile(m).read()))
                if all(len(want.get(c, [])) >= 5 for c in ("cat", "ship")):
                    break
    for cls, files in want.items():
        (tmp_path / cls).mkdir()
        for name, data in sorted(files)[:5]:
            (tmp_path / cls / name).write_bytes(data)
    x, y, classes = read_class_folders(tmp_path)
    assert classes == ("cat", "ship") and x.shape == (10, 32, 32, 3) and y.tolist() == [0] * 5 + [1] * 5
    first = sorted(want["cat"])[0][1]
    assert np.array_equal(x[0], np.asarray(Image.open(io.BytesIO(first)).convert("RGB")))

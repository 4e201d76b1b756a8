"""How user images are read: layouts that could be one image or a batch are refused, not guessed;
16-bit pixels (arrays and PIL images) are scaled from their full range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import AnoMem, InvalidInputError, get_config
from anomem.data.convert import to_image_tensor
from anomem.torch_model import AnoMemModel

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)       # one colour image, (H, W, C)


@pytest.fixture(scope="module")
def detector() -> AnoMem:
    """A detector with an untrained network: scoring is what is tested here, not fitting."""
    det = AnoMem("digits")
    det.network_ = AnoMemModel(get_config("digits")).eval()
    return det


def one_image(channels: int, first: bool) -> np.ndarray:
    im = RGB if channels == 3 else (RGB[..., :1] if channels == 1 else
                                    np.concatenate([RGB, np.full((20, 20, 1), 255, np.uint8)], -1))
    return np.ascontiguousarray(im.transpose(2, 0, 1)) if first else im


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("first", [False, True], ids=["HWC", "CHW"])
def test_one_image_without_a_batch_axis_is_refused_and_x_none_reads_it(channels, first, detector):
    x = one_image(channels, first)
    if first and channels == 1:     # (1, H, W): one gray image whichever way it is read
        assert detector.decision_function(x).shape == (1,)
        return
    with pytest.raises(InvalidInputError) as err:
        detector.decision_function(x)
    message = str(err.value)
    assert f"shape {x.shape}" in message and "ambiguous" in message and "x[None]" in message
    assert "\n" not in message
    got = to_image_tensor(x[None], 16)
    assert got.shape == (1, 3, 16, 16)
    assert torch.equal(got, to_image_tensor([x], 16))                # as one image of a list
    assert torch.equal(got, to_image_tensor(one_image(channels, not first)[None], 16))   # either layout
    assert detector.decision_function(x[None]).shape == (1,)


def test_the_alpha_channel_is_dropped_and_gray_is_repeated():
    rgba, gray = one_image(4, False)[None], one_image(1, False)[None]
    assert torch.equal(to_image_tensor(rgba, 20), to_image_tensor(RGB[None], 20))
    assert torch.equal(to_image_tensor(gray, 20), torch.from_numpy(RGB[..., :1]).permute(2, 0, 1)
                       .expand(3, -1, -1)[None])


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_clear_batches_of_gray_images_are_read_without_complaint(n):
    x = RNG.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    got = to_image_tensor(x, 8)
    assert got.shape == (n, 3, 8, 8)
    assert torch.equal(got[:, 0], torch.from_numpy(x))
    small = RNG.integers(0, 256, (5, 3, 8), dtype=np.uint8)           # images 3 px high: no channel axis
    assert torch.equal(to_image_tensor(small, 8), to_image_tensor(small[:, None], 8))
    row = RNG.integers(0, 256, (1, 8, 3), dtype=np.uint8)            # one 8x3 image, not a 1 px row
    assert torch.equal(to_image_tensor(row, 8), to_image_tensor(row[:, None], 8))


@pytest.mark.parametrize("n", [3, 4])
def test_three_or_four_gray_images_need_a_channel_axis(n):
    x = RNG.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match=rf"{n} gray images of 8x8 px, or one 8x8 px image "
                                                 rf"with {n} channels first.*x\[:, None\]"):
        to_image_tensor(x, 8)
    want = torch.cat([to_image_tensor(im[None, None], 8) for im in x])
    assert torch.equal(to_image_tensor(x[:, None], 8), want)
    assert torch.equal(to_image_tensor(x[..., None], 8), want)
    assert torch.equal(to_image_tensor(list(x), 8), want)              # a list holds single images


def test_uint16_pixels_are_scaled_from_their_full_range():
    x8 = RNG.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x16 = x8.astype(np.uint16) * 257                                  # the same pixels in 16 bits
    assert torch.equal(to_image_tensor(x16, 8), to_image_tensor(x8, 8))
    assert torch.equal(to_image_tensor(x16.astype(">u2"), 8), to_image_tensor(x8, 8))   # big-endian
    ramp = np.arange(0, 65536, 1024, dtype=np.uint16).reshape(1, 8, 8)[:, None]
    want = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(to_image_tensor(ramp, 8)[:, 0].numpy(), want[:, 0])
    assert torch.equal(to_image_tensor(torch.from_numpy(x16), 8), to_image_tensor(x8, 8))


def test_16_bit_pil_images_keep_their_range():
    gray8 = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    want = to_image_tensor(gray8[None], 8)
    pil16 = Image.fromarray(gray8.astype(np.uint16) * 257)
    assert pil16.mode == "I;16"
    assert torch.equal(to_image_tensor(pil16, 8), want)
    assert torch.equal(to_image_tensor([pil16, Image.fromarray(gray8)], 8), torch.cat([want, want]))
    wide = Image.fromarray(gray8.astype(np.int32) * 257)             # mode I, 16-bit values
    assert wide.mode == "I" and torch.equal(to_image_tensor(wide, 8), want)
    narrow = Image.fromarray(gray8.astype(np.int32))                  # mode I, 8-bit values
    assert torch.equal(to_image_tensor(narrow, 8), want)
    fractions = Image.fromarray(gray8.astype(np.float32) / 255)       # mode F in [0, 1]
    assert fractions.mode == "F" and torch.equal(to_image_tensor(fractions, 8), want)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint32])
def test_other_integer_dtypes_are_fractions_and_name_their_dtype_otherwise(dtype):
    x = RNG.integers(0, 256, (2, 8, 8)).astype(dtype)
    with pytest.raises(InvalidInputError, match=rf"dtype {np.dtype(dtype).name} are read as fractions"
                                                 r" in \[0, 1\].*uint8"):
        to_image_tensor(x, 8)
    mask = (x > 127).astype(dtype)
    assert torch.equal(to_image_tensor(mask, 8)[:, 0], torch.from_numpy((x > 127).astype(np.uint8) * 255))


def test_image_sizes_reads_each_layout_before_resizing():
    from anomem.data.convert import image_sizes
    assert image_sizes(np.zeros((2, 5, 7, 3), np.uint8)) == [(5, 7), (5, 7)]        # (N, H, W, C)
    assert image_sizes(torch.zeros(1, 3, 9, 4)) == [(9, 4)]                           # (N, C, H, W)
    assert image_sizes(np.zeros((3, 8, 6))) == [(8, 6)] * 3               # (N, H, W), even (3, H, W)
    assert image_sizes([Image.new("L", (20, 10)), np.zeros((5, 6, 3))]) == [(10, 20), (5, 6)]
    assert image_sizes(Image.new("RGB", (11, 13))) == [(13, 11)]                     # one PIL image
    with pytest.raises(InvalidInputError, match="must have shape"):
        image_sizes(np.zeros(5))

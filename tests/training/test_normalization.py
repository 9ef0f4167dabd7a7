"""MNIST-style digit normalisation (training/normalization.py) on hand-made images.

Each case states what a user's picture should become: light ink on black, the ink's longer
side 20 pixels, its centre of mass in the middle of the 28x28 frame; nothing for a blank sheet.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.architectures import build
from training.augment import HandwritingAugment, handwriting
from training.data import digit_images
from training.normalization import (
    DIGIT_BOX,
    DIGIT_FRAME,
    NormalizeDigits,
    crop_boxes,
    digit_transforms,
    heatmap_to_input,
    normalize_digits,
)

CENTRE = (DIGIT_FRAME - 1) / 2.0


def run(gray: np.ndarray) -> np.ndarray:
    """(H, W) or (N, H, W) grey 0..255 -> (N, 28, 28) normalised."""
    batch = np.asarray(gray, np.float32)
    if batch.ndim == 2:
        batch = batch[None]
    return np.asarray(normalize_digits(tf.constant(batch[..., None])))[..., 0]


def ink_box(image: np.ndarray, level: float = 128.0) -> tuple[int, int, int, int]:
    rows = np.flatnonzero((image > level).any(axis=1))
    cols = np.flatnonzero((image > level).any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(image.shape)
    total = image.sum()
    return float((ys * image).sum() / total), float((xs * image).sum() / total)


def test_an_all_white_and_an_all_black_image_come_out_empty_without_nan() -> None:
    blank = np.stack([np.full((28, 28), 255.0), np.zeros((28, 28)), np.full((28, 28), 128.0)])
    out = run(blank)
    assert out.shape == (3, 28, 28)
    assert np.isfinite(out).all()
    assert out.max() == 0.0


def test_a_blank_sheet_with_jpeg_like_noise_is_still_blank() -> None:
    rng = np.random.default_rng(0)
    paper = np.clip(240 + rng.normal(0, 4, (64, 64)), 0, 255)
    assert run(paper).max() == 0.0


def test_dark_ink_on_white_becomes_light_ink_on_black_like_its_inverse() -> None:
    digits, _labels = digit_images()
    light = digits[:8].astype(np.float32)
    dark = 255.0 - light
    np.testing.assert_allclose(run(dark), run(light), atol=1e-3)
    out = run(dark)
    assert out[:, 0, :].max() == 0.0 and out[:, :, 0].max() == 0.0  # the border is background
    assert out.max() == pytest.approx(255.0, abs=1.0)


def test_a_small_off_centre_digit_is_scaled_into_the_box_and_centred_by_mass() -> None:
    sheet = np.full((200, 200), 250.0)  # white paper, slightly grey
    sheet[20:60, 130:150] = 30.0  # a dark 40x20 block (tall), top right
    out = run(sheet)[0]
    top, left, bottom, right = ink_box(out)
    assert bottom - top + 1 == pytest.approx(DIGIT_BOX, abs=1)  # longer side: 20 px
    assert right - left + 1 == pytest.approx(DIGIT_BOX / 2, abs=1)  # aspect ratio kept
    cy, cx = centre_of_mass(out)
    assert cy == pytest.approx(CENTRE, abs=0.5) and cx == pytest.approx(CENTRE, abs=0.5)


def test_faint_pencil_on_grey_paper_is_stretched_to_full_contrast() -> None:
    sheet = np.full((56, 56), 180.0)
    sheet[10:40, 25:31] = 140.0  # 40 grey levels darker than the paper
    out = run(sheet)[0]
    assert out.max() == pytest.approx(255.0, abs=1.0)
    assert ink_box(out)[2] - ink_box(out)[0] + 1 == pytest.approx(DIGIT_BOX, abs=1)


def test_a_digit_touching_the_border_keeps_its_background_and_all_its_ink() -> None:
    digits, _labels = digit_images()
    one = np.zeros((28, 28), np.float32)
    one[0:28, 12:16] = 255.0  # a stroke from the top edge to the bottom edge
    cut = digits[0].astype(np.float32)
    cut = np.pad(cut, ((0, 0), (14, 0)))[:, :28]  # a "0" pushed against the right edge
    for image in (one, cut, 255.0 - one):
        out = run(image)[0]
        top, _left, bottom, _right = ink_box(out, 64)
        assert bottom - top + 1 == pytest.approx(DIGIT_BOX, abs=1)
        assert out[0].max() == 0.0 and out[-1].max() == 0.0
        assert centre_of_mass(out)[1] == pytest.approx(CENTRE, abs=1.0)


@pytest.mark.parametrize("orientation", ["horizontal", "vertical", "diagonal"])
def test_a_one_pixel_line_is_scaled_up_not_lost(orientation: str) -> None:
    sheet = np.zeros((64, 64), np.float32)
    if orientation == "horizontal":
        sheet[40, 5:25] = 255.0
    elif orientation == "vertical":
        sheet[5:25, 40] = 255.0
    else:
        for i in range(20):
            sheet[30 + i, 10 + i] = 255.0
    out = run(sheet)[0]
    assert np.isfinite(out).all()
    top, left, bottom, right = ink_box(out, 64)
    longer = max(bottom - top, right - left) + 1
    assert longer == pytest.approx(DIGIT_BOX, abs=2)
    cy, cx = centre_of_mass(out)
    assert cy == pytest.approx(CENTRE, abs=1.0) and cx == pytest.approx(CENTRE, abs=1.0)


def test_a_single_dot_does_not_divide_by_zero() -> None:
    sheet = np.zeros((28, 28), np.float32)
    sheet[3, 3] = 255.0
    out = run(sheet)[0]
    assert np.isfinite(out).all() and out.max() > 0


def test_the_batch_is_normalised_image_by_image() -> None:
    digits, _labels = digit_images()
    batch = np.stack([digits[0], 255 - digits[1], np.zeros((28, 28)), digits[2]]).astype("f4")
    together = run(batch)
    alone = np.concatenate([run(image) for image in batch])
    np.testing.assert_allclose(together, alone, atol=1e-3)


def test_the_resample_gives_what_tensorflows_image_warp_gives() -> None:
    """The warp is matrix products (so OpenVINO and XLA take it); it must sample like
    ImageProjectiveTransformV3 (bilinear, 0 past the edges), which it replaced."""
    from training.normalization import _warp

    digits, _labels = digit_images()
    gray = np.concatenate([digits[:40], 255 - digits[40:60]]).astype(np.float32)[..., None]
    crops = np.asarray(digit_transforms(tf.constant(gray)))
    # Also maps reaching past the image (a digit at the edge, shifted and enlarged).
    past_edges = crops.copy()
    past_edges[:, 0] *= 1.7
    past_edges[:, 4] *= 1.7
    past_edges[:, 2] -= 9.5
    past_edges[:, 5] += 6.25
    for maps, size in ((crops, (28, 28)), (past_edges, (28, 28)), (crops, (40, 20))):
        ours = np.asarray(_warp(tf.constant(gray[..., 0]), tf.constant(maps), size))[..., None]
        tensorflows = np.asarray(
            tf.raw_ops.ImageProjectiveTransformV3(
                images=gray,
                transforms=maps,
                output_shape=size,
                fill_value=0.0,
                interpolation="BILINEAR",
                fill_mode="CONSTANT",
            )
        )
        assert ours.shape == tensorflows.shape == (len(gray), *size, 1)
        assert np.abs(tensorflows).max() > 100  # ink was sampled, not only padding
        np.testing.assert_allclose(ours, tensorflows, atol=1e-3)  # grey levels 0..255


def test_the_heatmap_maps_back_onto_the_crop_in_the_input_image() -> None:
    """A heatmap lit in the normalised frame's centre lands where the digit was."""
    sheet = np.zeros((1, 28, 28, 1), np.float32)
    sheet[0, 2:10, 18:24, 0] = 255.0  # a small block, top right
    transforms = digit_transforms(tf.constant(sheet))
    top, left, bottom, right = np.asarray(crop_boxes(transforms))[0]
    assert top < 2 and bottom > 9 and left < 18 and right > 23  # the crop holds the ink
    assert bottom - top == pytest.approx(right - left)  # square
    heat = np.zeros((1, 14, 14), np.float32)
    heat[0, 5:9, 5:9] = 1.0  # the middle of the normalised frame: the digit
    back = np.asarray(heatmap_to_input(tf.constant(heat), transforms, (28, 28)))[0]
    assert back.shape == (14, 14)
    row, col = np.unravel_index(int(back.argmax()), back.shape)
    assert 1 <= row <= 4 and 9 <= col <= 11  # over the block (pixels 2..9 x 18..23)
    assert back[8:, :].max() == 0.0 and back[:, :7].max() == 0.0


def test_the_layer_round_trips_through_keras_saving(tmp_path: Path) -> None:
    model = build("simple", (28, 28, 1), 10, normalize_digits=True)
    assert [layer.name for layer in model.layers][:6] == [
        "images",
        "grayscale",
        "resize",
        "normalize_digits",
        "digit_jitter",  # training only
        "rescale",
    ]
    assert model.get_layer("normalize_digits").count_params() == 0
    path = tmp_path / "digits.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("normalize_digits"), NormalizeDigits)
    x = np.zeros((2, 50, 40, 3), np.float32)
    x[:, 10:30, 15:22] = 255.0
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)


def test_normalisation_is_refused_on_an_rgb_model() -> None:
    with pytest.raises(ValueError, match="grayscale"):
        build("simple", (28, 28, 3), 10, normalize_digits=True)


def test_the_same_parameters_with_and_without_normalisation() -> None:
    with_it = build("simple", (28, 28, 1), 10, normalize_digits=True)
    without = build("simple", (28, 28, 1), 10)
    assert with_it.count_params() == without.count_params()


def test_augmented_digits_normalise_back_to_a_centred_full_contrast_digit() -> None:
    """Whatever the augmentation does (paper, small, moved, rotated, blurred, JPEG), the
    normalised result is a digit of the box's size in the middle of the frame."""
    digits, _labels = digit_images()
    batch = tf.constant(np.repeat(digits[:32, ..., None], 3, axis=-1).astype("f4"))
    varied = np.asarray(handwriting(batch, tf.constant([3, 4]), HandwritingAugment(keep=0.0)))
    assert varied.shape == (32, 28, 28, 3)
    assert varied.min() >= 0.0 and varied.max() <= 255.0
    assert not np.allclose(varied, np.asarray(batch))
    corners = varied[:, [0, 0, -1, -1], [0, -1, 0, -1], 0].mean(axis=1)
    assert (corners > 128).sum() >= 8  # a good share on paper (dark ink on light)
    out = run(varied[..., 0])
    for image in out:
        top, left, bottom, right = ink_box(image, 77)
        assert max(bottom - top, right - left) + 1 >= DIGIT_BOX - 3
        cy, cx = centre_of_mass(image)
        assert abs(cy - CENTRE) <= 4.5 and abs(cx - CENTRE) <= 4.5

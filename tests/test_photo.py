"""User photo loading and the Fashion-MNIST conversion (semdir_edit.data.photo), on images built here."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from semdir_edit.core.errors import UserError
from semdir_edit.data.photo import load_domain_image, load_image, to_domain

H, W = 120, 200  # Photo size: landscape, like a shoe shot.


def shoe_photo(color=(20, 20, 20), background=255, h: int = H, w: int = W) -> np.ndarray:
    """A shoe-like polygon (long edge horizontal, 60% of the width) on a plain background, uint8 (h, w, 3) RGB."""
    img = np.full((h, w, 3), background, np.uint8)
    pts = np.array([[0.2, 0.35], [0.4, 0.35], [0.45, 0.55], [0.75, 0.6], [0.8, 0.7], [0.8, 0.75], [0.2, 0.75]])
    cv2.fillPoly(img, [np.rint(pts * [w, h]).astype(np.int32)], color)
    return img


def save(path: Path, rgb: np.ndarray, **kwargs) -> Path:
    Image.fromarray(rgb).save(path, **kwargs)
    return path


def bright_box(image: np.ndarray, threshold: int = 40) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), exclusive, of the pixels above ``threshold``."""
    ys, xs = np.nonzero(image > threshold)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def png_header(width: int, height: int) -> bytes:
    """A PNG with only an IHDR (8-bit gray) declaring ``width`` x ``height``, and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_dark_shoe_on_white_becomes_bright_centred_article(tmp_path):
    image, notes = load_domain_image(save(tmp_path / "shoe.png", shoe_photo()))
    assert image.shape == (1, 32, 32) and image.dtype == torch.uint8
    x = image[0].numpy()
    assert x.max() >= 250 and x[:2].max() == 0 and x[:, :2].max() == 0  # Bright on black, 2-px padding.
    top, bottom, left, right = bright_box(x)
    assert (left, right) == (2, 30)  # The long edge spans 28 pixels.
    assert bottom - top < 28 and abs((top + bottom) / 2 - 16) <= 1  # Short edge centred.
    result = to_domain(shoe_photo())
    assert not result.passthrough
    assert result.box is not None and abs(result.box[0] - 40) <= 2 and abs(result.box[2] - 160) <= 2


@pytest.mark.parametrize("color", [(205, 205, 205), (40, 90, 220), (230, 200, 40), (200, 60, 60)])
def test_pale_and_coloured_articles_come_out_strong(color):
    x = to_domain(shoe_photo(color=color)).image
    assert x.max() >= 200
    assert np.percentile(x[x > 0], 75) >= 200  # The body, not just a rim.
    assert x[:2].max() == 0


def test_jpeg_noise_and_gradient_are_not_the_article(tmp_path):
    rgb = shoe_photo().astype(np.float32)
    gradient = np.linspace(0, 30, W)[None, :, None] + np.linspace(0, 10, H)[:, None, None]
    background = np.all(rgb == 255, axis=2, keepdims=True)
    rgb = np.where(background, rgb - gradient, rgb).astype(np.uint8)
    path = save(tmp_path / "noisy.jpg", rgb, quality=20)
    pixels = load_image(path).pixels
    result = to_domain(pixels)
    left, top, right, bottom = result.box
    assert right - left <= 0.7 * W and bottom - top <= 0.6 * H
    assert abs(left - 40) <= 6 and abs(right - 160) <= 6
    top_, bottom_, left_, right_ = bright_box(result.image)
    assert right_ - left_ >= 27  # The article fills the width, not a small patch in a big frame.
    assert result.image[:5].max() <= 30 and result.image[-5:].max() <= 30


def test_domain_image_passes_through_unchanged(tmp_path):
    x = np.zeros((28, 28), np.uint8)
    x[3:25, 8:20] = 180
    x[10:14, 10:18] = 250
    path = tmp_path / "domain.png"
    cv2.imwrite(str(path), x)
    image, notes = load_domain_image(path)
    assert np.array_equal(image[0].numpy(), np.pad(x, 2))
    result = to_domain(np.pad(x, 2))
    assert result.passthrough and np.array_equal(result.image, np.pad(x, 2))


def test_force_passthrough_resizes_any_image():
    result = to_domain(shoe_photo(), force_passthrough=True)
    assert result.passthrough and result.image.shape == (32, 32) and result.image.dtype == np.uint8
    assert any("resized" in n for n in result.notes)
    assert result.image[0, 0] == 255  # No negation: the user asked for no preprocessing.


def test_rgba_with_transparent_background(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)  # Transparent black: ignoring alpha would make the image blank.
    shape = shoe_photo(color=(30, 30, 30), background=0)
    rgba[..., :3] = shape
    rgba[..., 3] = np.where(shape[..., 0] == 30, 255, 0)
    loaded = load_image(save(tmp_path / "cutout.png", rgba))
    assert loaded.pixels.shape == (H, W, 3) and loaded.pixels[0, 0].tolist() == [255, 255, 255]
    assert any("transparent" in n for n in loaded.notes)
    assert to_domain(loaded.pixels).image.max() >= 250


def test_16bit_png(tmp_path):
    gray16 = (shoe_photo()[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), gray16)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
    loaded = load_image(path)
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == (H, W)
    assert loaded.pixels[0, 0] == 255 and loaded.pixels[H // 2 + 20, W // 2] == 20
    assert to_domain(loaded.pixels).image.max() >= 250


def test_palette_png(tmp_path):
    path = tmp_path / "palette.png"
    Image.fromarray(shoe_photo(color=(150, 30, 30))).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "P"
    loaded = load_image(path)
    assert loaded.pixels.shape == (H, W, 3)
    assert to_domain(loaded.pixels).image.max() >= 250


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "print.jpg"
    Image.fromarray(shoe_photo()).convert("CMYK").save(path, quality=95)
    loaded = load_image(path)
    assert loaded.pixels.shape == (H, W, 3) and loaded.pixels[0, 0].min() >= 240
    assert loaded.pixels[H // 2 + 20, W // 2].max() <= 60
    assert to_domain(loaded.pixels).image.max() >= 250


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.full((30, 60, 3), 255, np.uint8)
    rgb[:15, :20] = 0  # Dark block at the top left as stored.
    exif = Image.Exif()
    exif[0x0112] = 6  # Display = stored rotated 90 degrees clockwise.
    path = save(tmp_path / "phone.jpg", rgb, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.pixels.shape == (60, 30, 3)
    assert loaded.pixels[2:18, 17:28].max() < 60  # Now at the top right.
    assert loaded.pixels[2:18, 2:13].min() > 200
    assert any("orientation" in n for n in loaded.notes)


def test_animated_gif_uses_first_frame(tmp_path):
    first = Image.fromarray(shoe_photo())
    second = Image.fromarray(np.zeros((H, W, 3), np.uint8))
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    loaded = load_image(path)
    assert any("first frame" in n for n in loaded.notes)
    assert loaded.pixels[0, 0].min() >= 250  # Frame 0 is white at the corner, frame 1 black.


def test_raw_bytes_like_an_upload(tmp_path):
    data = save(tmp_path / "shoe.png", shoe_photo()).read_bytes()
    image, _ = load_domain_image(data)
    assert image.shape == (1, 32, 32) and image.max() >= 250
    with pytest.raises(UserError, match="^uploaded image: "):
        load_image(b"")
    with pytest.raises(UserError, match="^shoe.png: "):
        load_image(b"\x00" * 100, name="shoe.png")


def _truncated_png(tmp_path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    data = save(tmp_path / "full.png", noise).read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    return path


def _write(name: str, data: bytes):
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return make


def _folder(tmp_path: Path) -> Path:
    path = tmp_path / "folder.png"
    path.mkdir()
    return path


def _tga(tmp_path: Path) -> Path:
    return save(tmp_path / "image.tga", shoe_photo(), format="TGA")


BAD_INPUTS = {
    "empty": _write("empty.png", b""),
    "truncated": _truncated_png,
    "random bytes": _write("random.jpg", np.random.default_rng(1).bytes(2000)),
    "text named png": _write("notes.png", b"just some text, not a picture\n"),
    "folder": _folder,
    "missing": lambda tmp_path: tmp_path / "missing.png",
    "header 20000x20000": _write("huge.png", png_header(20000, 20000)),
    "header 10000x10000": _write("big.png", png_header(10000, 10000)),  # Over our limit, under Pillow's.
    "zero size": _write("zero.png", png_header(0, 5)),
    "unsupported format": _tga,
}


@pytest.mark.parametrize("make", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise_one_line_user_error(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(UserError) as info:
        load_domain_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and path.name in message and "\n" not in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = save(tmp_path / "secret.png", shoe_photo())
    path.chmod(0)
    with pytest.raises(UserError, match="secret.png: permission denied"):
        load_image(path)


def test_declared_size_is_refused_before_decoding(tmp_path):
    path = save(tmp_path / "small.png", shoe_photo())
    with pytest.raises(UserError, match=r"small\.png: the image declares 200x120 = 24,000 pixels"):
        load_image(path, max_pixels=10_000)
    assert load_image(path, max_pixels=24_000).pixels.shape == (H, W, 3)
    with pytest.raises(UserError, match="huge.png: the image declares 400,000,000 pixels"):
        load_image(png_header(20000, 20000), name="huge.png")


@pytest.mark.parametrize(
    "pixels",
    [np.full((H, W, 3), 255, np.uint8), np.zeros((1, 1), np.uint8), np.full((28, 28), 0, np.uint8)],
    ids=["white", "1x1", "black 28"],
)
def test_blank_images_have_no_article(pixels):
    with pytest.raises(UserError, match="no article found \\(the image is blank\\)"):
        to_domain(pixels)


def test_blank_file_names_the_file(tmp_path):
    path = save(tmp_path / "white.png", np.full((50, 50, 3), 255, np.uint8))
    with pytest.raises(UserError, match="white.png: no article found"):
        load_domain_image(path)


def test_noise_only_photo_is_blank(tmp_path):
    white = np.full((H, W, 3), 255, np.uint8)
    white = np.clip(white - np.random.default_rng(2).integers(0, 6, white.shape), 0, 255).astype(np.uint8)
    with pytest.raises(UserError, match="no article found"):
        to_domain(load_image(save(tmp_path / "grain.jpg", white, quality=30)).pixels)


@pytest.mark.parametrize("shape", [(1, 400), (400, 1), (3, 2000), (2, 2), (1, 2)])
def test_extreme_aspect_ratios_do_not_crash(shape):
    x = np.full(shape, 255, np.uint8)
    n = max(shape)
    middle = slice(n // 3, max(n // 3 + 1, 2 * n // 3))  # A dark middle third of the long axis (at least 1 pixel).
    x[(middle, slice(None)) if shape[0] == n else (slice(None), middle)] = 0
    out = to_domain(x).image
    assert out.shape == (32, 32) and out.max() >= 200


def test_dark_background_photo_keeps_polarity():
    photo = shoe_photo(color=(220, 220, 220), background=15)
    x = to_domain(photo).image
    assert x.max() >= 250 and x[:2].max() == 0


def _pil_modes() -> dict[str, tuple[Image.Image, str]]:
    rgb = shoe_photo()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    return {
        "1-bit png": (Image.fromarray(gray).convert("1"), "PNG"),
        "gray jpeg": (Image.fromarray(gray), "JPEG"),
        "gray+alpha png": (Image.fromarray(gray).convert("LA"), "PNG"),
        "32-bit int tiff": (Image.fromarray(gray.astype(np.int32) * 257), "TIFF"),
        "float tiff": (Image.fromarray(gray.astype(np.float32) / 255), "TIFF"),
        "cmyk tiff": (Image.fromarray(rgb).convert("CMYK"), "TIFF"),
        "bmp": (Image.fromarray(rgb), "BMP"),
        "webp": (Image.fromarray(rgb), "WEBP"),
    }


@pytest.mark.parametrize("case", _pil_modes().keys())
def test_other_modes_and_formats(tmp_path, case):
    image, fmt = _pil_modes()[case]
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    loaded = load_image(path)
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape[:2] == (H, W)
    assert loaded.pixels[0, 0].min() >= 245 and loaded.pixels[H // 2 + 20, W // 2].max() <= 40
    assert to_domain(loaded.pixels).image.max() >= 250


def test_article_differing_only_in_hue():
    photo = shoe_photo(color=(255, 100, 108), background=148)  # About the same luminance as the background.
    result = to_domain(photo)
    assert result.image.max() >= 200 and any("colour distance" in n for n in result.notes)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Fashion-MNIST not installed")
def test_fashion_mnist_images_pass_through_and_round_trip():
    from semdir_edit.data.idx import read_idx

    images = read_idx(FASHION_MNIST)[:100]
    assert all(to_domain(x).passthrough for x in images)
    errors = []
    for x in images[:40]:  # Back to a catalogue photo: negated, 8x larger, white margins; then converted again.
        photo = np.pad(cv2.resize(255 - x, (224, 224), interpolation=cv2.INTER_NEAREST), 40, constant_values=255)
        errors.append(np.abs(to_domain(photo).image.astype(float) - np.pad(x, 2)).mean())
    assert np.mean(errors) < 10  # Sharpening an already sharpened image is most of what is left.

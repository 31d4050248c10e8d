"""Pre- and post-processing: every input format, split, resize/pad round trips, Lab."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from onnx_models import constant_model, identity_model, metadata
from p2p.runtime import color, images
from p2p.runtime.engine import Engine
from p2p.runtime.errors import ImageError


def gradient(w=48, h=32):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


def test_jpeg_png_and_webp_decode_to_rgb(tmp_path):
    rgb = gradient()
    for name, kw in (("a.png", {}), ("a.jpg", {"quality": 98}), ("a.webp", {"lossless": True})):
        Image.fromarray(rgb).save(tmp_path / name, **kw)
        img = images.open_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (48, 32)
        tol = 6 if name.endswith("jpg") else 0
        assert np.abs(np.asarray(img, np.int16) - rgb).max() <= tol, name


def test_png_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 128, 65535]], np.uint16).repeat(4, 0)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img = np.asarray(images.open_rgb(tmp_path / "g16.png"))
    assert img[0, :, 0].tolist() == [0, 128, 255]
    assert (img[..., 0] == img[..., 2]).all()


def test_grayscale_and_cmyk(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "l.png")
    assert np.asarray(images.open_rgb(tmp_path / "l.png"))[0, 0].tolist() == [77, 77, 77]
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    r, g, b = np.asarray(images.open_rgb(tmp_path / "c.jpg"))[4, 4].tolist()
    assert r > 240 and g < 15 and b < 15


def test_alpha_and_palette_transparency_composite_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    rgba.save(tmp_path / "a.png")
    img = np.asarray(images.open_rgb(tmp_path / "a.png"))
    assert img[0, 0].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in img[0, 1].tolist())
    assert img[1, 1].tolist() == [0, 0, 255]
    pal = Image.new("P", (4, 1), 1)
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "p.png", transparency=0)
    img = np.asarray(images.open_rgb(tmp_path / "p.png"))
    assert img[0, 0].tolist() == [255, 255, 255] and img[0, 1].tolist() == [200, 0, 0]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 255, 0), (0, 0, 20, 20))  # left half green
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = images.open_rgb(tmp_path / "o.jpg")
    assert out.size == (20, 40)
    top = np.asarray(out)[5, 10]
    assert top[1] > 200 and top[0] < 60  # the green (left) half is now on top


def test_first_frame_of_animated_gif(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    r, g, b = np.asarray(images.open_rgb(tmp_path / "anim.gif"))[0, 0].tolist()
    assert r > 200 and b < 50


def test_bad_files_raise_image_error_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match=r"text\.png: not an image"):
        images.open_rgb(tmp_path / "text.png")
    buf = io.BytesIO()
    Image.fromarray(gradient(64, 64)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode"):
        images.open_rgb(tmp_path / "cut.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageError, match=r"big\.png: 40x30 = 1200 pixels is over the decompr"):
        images.open_rgb(tmp_path / "big.png")
    monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", "2000")
    assert images.open_rgb(tmp_path / "big.png").size == (40, 30)


@pytest.mark.parametrize("size, split, direction, half", [
    ((64, 32), "auto", "AtoB", "left"), ((64, 32), "auto", "BtoA", "right"),
    ((64, 31), "auto", "BtoA", None), ((30, 30), "left", "AtoB", "left"),
    ((64, 32), "none", "AtoB", None), ((64, 32), "right", "AtoB", "right"),
])
def test_choose_half(size, split, direction, half):
    assert images.choose_half(size, split, metadata(direction=direction)) == half


def test_split_auto_takes_the_direction_half_of_a_dataset_image(tmp_path):
    pair = np.zeros((32, 64, 3), np.uint8)
    pair[:, :32] = (255, 0, 0)
    pair[:, 32:] = (0, 0, 255)
    Image.fromarray(pair).save(tmp_path / "pair.png")
    prep = images.prepare(tmp_path / "pair.png", metadata(direction="BtoA"), "auto")
    assert prep.half == "right" and prep.size == (32, 32)
    assert prep.array.shape == (3, 32, 32)
    np.testing.assert_allclose(prep.array[:, 0, 0], [-1, -1, 1])


def test_fixed_size_resizes_and_comes_back_at_input_size(tmp_path):
    meta = metadata(image_size=32)
    Image.fromarray(gradient(50, 20)).save(tmp_path / "g.png")
    prep = images.prepare(tmp_path / "g.png", meta, "none")
    assert prep.array.shape == (3, 32, 32) and prep.size == (50, 20)
    assert prep.array.min() >= -1 and prep.array.max() <= 1
    assert images.to_image(prep.array, prep, meta).size == (50, 20)
    assert images.to_image(prep.array, prep, meta, model_size=True).size == (32, 32)


def test_dynamic_size_pads_to_multiple_and_crops_back_exactly(tmp_path):
    path = identity_model(tmp_path / "id.onnx", dynamic_size=True, size_multiple=8)
    engine = Engine(path, provider="cpu", cache_dir=tmp_path)
    rgb = gradient(50, 37)
    Image.fromarray(rgb).save(tmp_path / "g.png")
    prep = images.prepare(tmp_path / "g.png", engine.metadata, "none")
    assert prep.array.shape == (3, 40, 56)
    # reflect padding: row 37 mirrors row 35, column 50 mirrors column 48
    np.testing.assert_array_equal(prep.array[:, 37], prep.array[:, 35])
    np.testing.assert_array_equal(prep.array[:, :, 50], prep.array[:, :, 48])
    y = engine.run(prep.array[None])[0]
    out = images.to_image(y, prep, engine.metadata)
    np.testing.assert_array_equal(np.asarray(out), rgb)
    tiny = np.zeros((3, 3, 5), np.float32)
    assert images.pad_to_multiple(tiny, 8).shape == (3, 8, 8)  # too small to reflect: edge


def test_lab_model_output_combines_full_res_lightness_with_predicted_colour(tmp_path):
    a, b = 20.0, -30.0
    path = constant_model(tmp_path / "lab.onnx", [a / color.AB_SCALE, b / color.AB_SCALE],
                          color_space="lab", in_channels=1, out_channels=2, image_size=32)
    engine = Engine(path, provider="cpu", cache_dir=tmp_path)
    gray = np.tile(np.linspace(20, 230, 60, dtype=np.uint8), (40, 1))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    prep = images.prepare(tmp_path / "gray.png", engine.metadata, "none")
    assert prep.array.shape == (1, 32, 32)
    y = engine.run(prep.array[None])[0]
    np.testing.assert_allclose(y, np.broadcast_to(np.array([a, b])[:, None, None] / 110, y.shape),
                               atol=1e-6)
    out = np.asarray(images.to_image(y, prep, engine.metadata), np.float64)
    assert out.shape == (40, 60, 3)
    skcolor = pytest.importorskip("skimage.color")  # independent of p2p.runtime.color
    L = skcolor.rgb2lab(np.repeat(gray[..., None], 3, -1) / 255.0)[..., 0]
    want = skcolor.lab2rgb(np.stack([L, np.full_like(L, a), np.full_like(L, b)], -1)) * 255
    assert np.abs(out - want).max() <= 1.0
    small = images.to_image(y, prep, engine.metadata, model_size=True)
    assert small.size == (32, 32)


@pytest.mark.parametrize("fmt, pil", [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_encode_formats(fmt, pil):
    img = Image.fromarray(gradient())
    data = images.encode(img, fmt)
    back = Image.open(io.BytesIO(data))
    assert back.format == pil and back.size == img.size
    if fmt == "png":
        assert np.array_equal(np.asarray(back), np.asarray(img))

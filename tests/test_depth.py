"""Issue 18 item 3: 8-bit, 16-bit and float (0..1) images at full precision, end to end.

The one decoder reads each at its own depth (16-bit colour PNG and TIFF included, which
Pillow alone truncates to 8 bits), a float image outside 0..1 is an error naming the file,
``images.normalize``/``denormalize`` are exact inverses, a model trained on 16-bit data
records its depth and p2p-translate and p2p-serve write its outputs at 16 bits.
"""

from __future__ import annotations

import io
import json

import cv2
import httpx
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from onnx_models import identity_model, metadata
from p2p.cli.eval import main as eval_cli
from p2p.cli.export import main as export_cli
from p2p.cli.train import main as train_cli
from p2p.cli.translate import main as translate_cli
from p2p.runtime import images
from p2p.runtime.engine import Engine
from p2p.runtime.errors import ImageError, ModelError
from p2p.runtime.metadata import ModelMetadata
from serve_helpers import live_server

TINY = ["--image-size", "32", "--load-size", "36", "--ngf", "4", "--ndf", "4", "--quiet",
        "--threads", "1", "--workers", "0"]


def rng(seed=0):
    return np.random.default_rng(seed)


def smooth16(h, w, c, seed=0) -> np.ndarray:
    """16-bit samples that use every bit: a ramp (PNG filters Sub/Paeth get picked) + noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 997 + yy * 251)[..., None] + np.arange(c) * 5000
    return ((base + rng(seed).integers(0, 300, (h, w, c))) % 65536).astype(np.uint16)


def translate(*args):
    r = CliRunner().invoke(translate_cli, [str(a) for a in args] + ["-q"])
    return r


# --- decoding -----------------------------------------------------------------------------

def test_16_bit_colour_png_and_tiff_decode_exactly(tmp_path):
    a = smooth16(37, 53, 3)
    cv2.imwrite(str(tmp_path / "cv.png"), a[..., ::-1])  # libpng, adaptive filters
    (tmp_path / "ours.png").write_bytes(images.png_bytes(a))
    tifffile.imwrite(tmp_path / "rgb16.tif", a, photometric="rgb")
    with Image.open(tmp_path / "cv.png") as im:  # what Pillow alone gives: 8 bits
        assert im.mode == "RGB" and np.asarray(im).dtype == np.uint8
    for name in ("cv.png", "ours.png", "rgb16.tif"):
        got = images.decode(tmp_path / name)
        assert got.dtype == np.uint16 and np.array_equal(got, a), name
    # through a file object too (p2p-serve's request body)
    assert np.array_equal(images.decode(io.BytesIO((tmp_path / "cv.png").read_bytes())), a)


def test_16_bit_rgba_png_is_composited_on_white_at_16_bits(tmp_path):
    a = smooth16(8, 8, 4)
    a[..., 3] = 0
    a[0, 0, 3] = 65535
    cv2.imwrite(str(tmp_path / "a.png"), a[..., [2, 1, 0, 3]])
    got = images.decode(tmp_path / "a.png")
    assert got.shape == (8, 8, 3) and got.dtype == np.uint16
    assert np.array_equal(got[0, 0], a[0, 0, :3]) and (got[1:] == 65535).all()


def test_greyscale_stays_one_band_and_8_bit_rgb_is_unchanged(tmp_path):
    g = rng().integers(0, 65536, (16, 24), dtype=np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    assert np.array_equal(images.decode(tmp_path / "g16.png"), g[..., None])
    rgb = rng().integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(images.decode(tmp_path / "rgb.png"), rgb)


def test_float_tiff_in_0_1_is_read_exactly(tmp_path):
    f = rng().random((20, 30, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f, photometric="rgb")
    tifffile.imwrite(tmp_path / "f1.tif", f[..., 0])
    assert np.array_equal(images.decode(tmp_path / "f.tif"), f)
    assert np.array_equal(images.decode(tmp_path / "f1.tif"), f[..., :1])


@pytest.mark.parametrize("value, said", [(1.5, r"values span 0\.\.1\.5, outside 0\.\.1"),
                                         (-0.25, r"values span -0\.25\.\.1, outside"),
                                         (np.nan, "NaN or Inf"), (np.inf, "NaN or Inf")])
def test_float_outside_0_1_is_an_error_naming_the_file(tmp_path, value, said):
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    f[3, 3] = value
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, f)
    with pytest.raises(ImageError, match=rf"^{path}: float image .*{said}"):
        images.decode(path)


def test_translate_names_the_out_of_range_float_file_and_goes_on(tmp_path):
    model = identity_model(tmp_path / "m.onnx", dynamic_size=True, in_channels=1,
                           out_channels=1, input_depth="float32", input_range=[0.0, 1.0],
                           output_depth="float32", output_range=[0.0, 1.0])
    src = tmp_path / "in"
    src.mkdir()
    good = rng().random((16, 16), dtype=np.float32)
    tifffile.imwrite(src / "good.tif", good)
    tifffile.imwrite(src / "bad.tif", good * 255)  # a 0..255 float image: refused, not clipped
    r = translate(src, "--model", model, "-o", tmp_path / "out", "--provider", "cpu")
    assert r.exit_code == 1
    assert "translated 1, skipped 0, failed 1" in r.output
    hi = float(np.float32(good.max() * 255))
    assert (f"failed: {src / 'bad.tif'}: float image values span {good.min() * 255:g}.."
            f"{hi:g}, outside 0..1" in r.output)
    out = tifffile.imread(tmp_path / "out" / "good.tif")  # float model: tif by default
    assert out.dtype == np.float32 and np.abs(out - good).max() < 1e-6


# --- the conversion -------------------------------------------------------------------------

@pytest.mark.parametrize("depth, top", [("uint8", 255), ("uint16", 65535), ("float32", 1.0)])
def test_normalize_and_denormalize_are_inverse_at_every_depth(depth, top):
    meta = metadata(input_depth=depth, input_range=(0.0, float(top)), output_depth=depth,
                    output_range=(0.0, float(top)), in_channels=3, out_channels=3)
    if depth == "float32":
        a = rng().random((9, 11, 3), dtype=np.float32)
    else:
        a = rng().integers(0, top + 1, (9, 11, 3)).astype(depth)
    x = images.normalize(a, meta)
    assert x.shape == (3, 9, 11) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    back = images.denormalize(x, meta)
    assert back.dtype == np.dtype(depth) and back.shape == a.shape
    if depth == "float32":
        assert np.abs(back - a).max() < 1e-6
    else:
        assert np.array_equal(back, a)
    grey = metadata(in_channels=1, input_depth=depth, input_range=(0.0, float(top)))
    assert np.array_equal(images.normalize(a[..., 0], grey), images.normalize(a[..., :1], grey))
    # 8-bit data keeps the paper's x / 127.5 - 1 bit for bit
    if depth == "uint8":
        assert np.array_equal(x, a.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)


def test_an_8_bit_image_into_a_16_bit_model_means_the_same_brightness():
    meta = metadata(input_depth="uint16", input_range=(0.0, 65535.0), in_channels=1)
    eight = np.array([[[0], [128], [255]]], np.uint8)
    sixteen = eight.astype(np.uint16) * 257
    assert np.allclose(images.normalize(eight, meta), images.normalize(sixteen, meta),
                       atol=1e-6)


def test_metadata_of_older_files_reads_as_8_bit():
    old = {k: v for k, v in metadata().to_props().items()
           if not k.split(".", 1)[1].startswith(("input_depth", "input_range", "output_"))}
    meta = ModelMetadata.from_props(old)
    assert (meta.input_depth, meta.input_range) == ("uint8", (0.0, 255.0))
    assert (meta.output_depth, meta.output_range) == ("uint8", (0.0, 255.0))
    props = metadata(output_depth="uint16", output_range=(0.0, 65535.0)).to_props()
    assert ModelMetadata.from_props(props).output_range == (0.0, 65535.0)
    with pytest.raises(ModelError, match="output_depth='uint12' is not one of"):
        ModelMetadata.from_props({**props, "p2p.output_depth": '"uint12"'})
    with pytest.raises(ModelError, match="output_range=.* low < high"):
        ModelMetadata.from_props({**props, "p2p.output_range": "[1, 1]"})


# --- translate and serve at 16 bits ---------------------------------------------------------

@pytest.fixture(scope="module")
def model16(tmp_path_factory):
    d = tmp_path_factory.mktemp("m16")
    return identity_model(d / "id16.onnx", dynamic_size=True, in_channels=3, out_channels=3,
                          input_depth="uint16", input_range=[0.0, 65535.0],
                          output_depth="uint16", output_range=[0.0, 65535.0])


def test_translate_writes_16_bit_png_and_tif_exactly(tmp_path, model16):
    a = smooth16(24, 40, 3)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(images.png_bytes(a))
    r = translate(src, "--model", model16, "-o", tmp_path / "png", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert np.array_equal(images.decode(tmp_path / "png" / "a.png"), a)  # identity, 16 bits
    r = translate(src, "--model", model16, "-o", tmp_path / "tif", "--format", "tif",
                  "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert np.array_equal(tifffile.imread(tmp_path / "tif" / "a.tif"), a)
    r = translate(src, "--model", model16, "-o", tmp_path / "jpg", "--format", "jpg")
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == (
        f"Error: {model16}: the model writes 3-band uint16 images; jpg cannot hold uint16 "
        "samples: use --format png or tif")
    assert not (tmp_path / "jpg").exists()


def test_serve_gives_the_same_16_bit_pixels_as_translate(tmp_path, model16):
    a = smooth16(24, 40, 3, seed=4)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(images.png_bytes(a))
    r = translate(src, "--model", model16, "-o", tmp_path / "out", "--provider", "cpu")
    assert r.exit_code == 0, r.output
    want = images.decode(tmp_path / "out" / "a.png")
    engine = Engine(model16, "cpu", cache_dir=tmp_path / "c")
    with live_server(engine, quiet=True, access_log=False) as (url, _), httpx.Client() as c:
        png = c.post(url + "/translate", content=(src / "a.png").read_bytes())
        tif = c.post(url + "/translate?format=tif", content=(src / "a.png").read_bytes())
        jpg = c.post(url + "/translate?format=jpg", content=(src / "a.png").read_bytes())
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(images.decode(io.BytesIO(png.content)), want)
    assert tif.status_code == 200 and tif.headers["content-type"] == "image/tiff"
    assert np.array_equal(tifffile.imread(io.BytesIO(tif.content)), want)
    assert jpg.status_code == 400 and "jpg cannot hold uint16" in jpg.text


# --- a 16-bit depth map: train -> export -> translate ---------------------------------------

def test_16_bit_depth_maps_train_export_and_translate_at_16_bits(tmp_path):
    """RGB photos (8-bit) -> depth maps (16-bit, 1 band), two folders: the checkpoint and
    the exported model record uint16 outputs, translate writes 16-bit PNGs that use more
    than 8 bits, equal to the engine's output denormalised, and p2p-eval scores them."""
    r0 = rng(1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i in range(4):
        photo = r0.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        depth = (photo.mean(-1) / 255 * 60000 + 1000).astype(np.uint16)
        Image.fromarray(photo).save(tmp_path / "a" / f"{i}.png")
        Image.fromarray(depth).save(tmp_path / "b" / f"{i}.png")
    run = tmp_path / "run"
    r = CliRunner().invoke(train_cli, [*TINY, "--data-a", str(tmp_path / "a"), "--data-b",
                                       str(tmp_path / "b"), "--out-channels", "1",
                                       "--max-steps", "3", "-o", str(run)])
    assert r.exit_code == 0, r.output
    task = json.loads((run / "config.json").read_text())["task"]
    assert (task["input_depth"], task["output_depth"]) == ("uint8", "uint16")
    model = tmp_path / "m.onnx"
    r = CliRunner().invoke(export_cli, [str(run), "-o", str(model), "--quiet"])
    assert r.exit_code == 0, r.output
    meta = Engine(model, "cpu", cache_dir=tmp_path / "c").metadata
    assert (meta.out_channels, meta.output_depth, meta.output_range) == (1, "uint16",
                                                                         (0.0, 65535.0))
    r = translate(tmp_path / "a", "--model", model, "-o", tmp_path / "out",
                  "--provider", "cpu")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "0.png") as im:
        assert im.mode == "I;16"
    out = images.decode(tmp_path / "out" / "0.png")
    assert out.dtype == np.uint16 and out.shape == (32, 32, 1)
    assert np.any(out % 257)  # not an 8-bit image scaled up
    engine = Engine(model, "cpu", cache_dir=tmp_path / "c2")
    prep = images.prepare(tmp_path / "a" / "0.png", engine.metadata, "none")
    y = engine.run(prep.array[None])[0]
    assert np.array_equal(out, images.denormalize(y, engine.metadata))
    r = CliRunner().invoke(eval_cli, [str(tmp_path / "out"), str(tmp_path / "b"), "--json",
                                      str(tmp_path / "s.json"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert 0 < json.loads((tmp_path / "s.json").read_text())["psnr"] < 100


def test_process_keeps_each_images_depth(tmp_path):
    """p2p-process reads full depth too: a 16-bit RGB PNG resized stays 16-bit, a float
    TIFF stays a float TIFF, and combine of an 8-bit A with a 16-bit B is 16-bit."""
    from p2p.cli.process import main as process_cli

    src = tmp_path / "in"
    src.mkdir()
    a16 = smooth16(40, 40, 3)
    (src / "rgb16.png").write_bytes(images.png_bytes(a16))
    f = rng().random((40, 40), dtype=np.float32)
    tifffile.imwrite(src / "f.tif", f)
    r = CliRunner().invoke(process_cli, ["resize", "--input", str(src), "--output",
                                         str(tmp_path / "r"), "--size", "40", "--quiet"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(images.decode(tmp_path / "r" / "rgb16.png"), a16)
    assert np.array_equal(tifffile.imread(tmp_path / "r" / "f.tif"), f)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    photo = rng().integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "x.png").write_bytes(images.png_bytes(a16))
    r = CliRunner().invoke(process_cli, ["combine", "--a", str(tmp_path / "a"), "--b",
                                         str(tmp_path / "b"), "--output", str(tmp_path / "ab"),
                                         "--quiet"])
    assert r.exit_code == 0, r.output
    ab = images.decode(tmp_path / "ab" / "x.png")
    assert ab.dtype == np.uint16 and ab.shape == (40, 80, 3)
    assert np.array_equal(ab[:, :40], photo.astype(np.uint16) * 257)
    assert np.array_equal(ab[:, 40:], a16)


def test_16_bit_grey_alpha_png_is_read_at_16_bits(tmp_path):
    """Pillow opens it as 8-bit RGBA; the decoder reads both bytes of each sample."""
    from badfiles import png_bytes

    a = smooth16(6, 9, 2)
    a[..., 1] = 65535
    a[0, 0, 1] = 0  # one transparent pixel: white
    rows = a.astype(">u2")
    (tmp_path / "la.png").write_bytes(png_bytes(9, 6, 16, 4, (r.tobytes() for r in rows)))
    got = images.decode(tmp_path / "la.png")
    assert got.dtype == np.uint16 and got.shape == (6, 9, 1)
    assert got[0, 0, 0] == 65535 and np.array_equal(got[1:, :, 0], a[1:, :, 0])


def test_auto_precision_keeps_fp32_for_deep_outputs():
    """BF16 resolves ~8 bits: a 16-bit output model runs FP32 under auto, before the AMX
    rule and without a measurement (issue 21's race would time a precision it cannot use)."""
    from p2p.runtime.precision import choose

    amx = frozenset({"amx_bf16", "avx512_bf16"})
    assert choose("auto", "fp32", "openvino", amx).precision == "bf16"
    for flags in (amx, frozenset({"avx512_bf16"})):
        deep = choose("auto", "fp32", "openvino", flags, output_depth="uint16")
        assert deep.precision == "fp32" and "uint16" in deep.why and not deep.race
        assert choose("bf16", "fp32", "openvino", flags,
                      output_depth="uint16").precision == "bf16"


def test_without_tifffile_a_deep_tiff_names_the_extra(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "rgb16.tif", smooth16(8, 8, 3), photometric="rgb")
    tifffile.imwrite(tmp_path / "f.tif", rng().random((8, 8, 3), dtype=np.float32),
                     photometric="rgb")
    Image.fromarray(rng().integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "8.tif")
    monkeypatch.setitem(__import__("sys").modules, "tifffile", None)  # import fails
    for name in ("rgb16.tif", "f.tif"):  # Pillow would truncate one, cannot open the other
        with pytest.raises(ImageError, match=rf"{name}: this TIFF .* needs tifffile, which is "
                                             r"not installed: pip install 'p2p\[tiff\]'"):
            images.decode(tmp_path / name)
    assert images.decode(tmp_path / "8.tif").shape == (8, 8, 3)  # Pillow reads 8-bit RGB


@pytest.mark.parametrize("dtype", ["int16", "int32", "uint32"])
def test_signed_and_32_bit_integer_greyscale_is_refused_not_read_as_16_bit(tmp_path, dtype):
    """Pillow opens one-band int16/int32/uint32 TIFFs as mode I, which read as unsigned
    16-bit: a 0..255 image came out nearly black, exit 0. They are refused, in the
    decoder's words, whatever their values."""
    f = tmp_path / f"{dtype}.tif"
    tifffile.imwrite(f, np.arange(64 * 64, dtype=dtype).reshape(64, 64) % 256)
    with pytest.raises(ImageError, match=rf"{dtype}.tif: {dtype} samples \(p2p reads 8-bit, "
                                          "16-bit and float images\\)"):
        images.decode(f)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_white_is_zero_greyscale_reads_the_same_at_every_depth(tmp_path, dtype):
    """MINISWHITE (0 is white): Pillow inverts it at 8 bits only; 16-bit and float came
    back as the negative."""
    g = rng().integers(0, 256, (40, 48)).astype(np.uint8)
    top = 65535 if dtype == "uint16" else 1.0
    raw = (top - g.astype(np.float64) * (257 if dtype == "uint16" else 1 / 255)).astype(dtype)
    tifffile.imwrite(tmp_path / "mw.tif", raw, photometric="miniswhite")
    tifffile.imwrite(tmp_path / "mw8.tif", 255 - g, photometric="miniswhite")
    want = images.decode(tmp_path / "mw8.tif")[..., 0]
    np.testing.assert_array_equal(want, g)
    got = images.decode(tmp_path / "mw.tif")[..., 0]
    scale = 257 if dtype == "uint16" else 1 / 255
    assert np.abs(got / scale - g).max() < 1e-3


def _png_with_key(path, a: np.ndarray, key: tuple) -> None:
    """A PNG of ``a`` (grey or RGB, 8 or 16 bits) with a tRNS transparent colour ``key``."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    h, w = a.shape[:2]
    depth = 16 if a.dtype == np.uint16 else 8
    raw = b"".join(b"\0" + a[y].astype(">u2" if depth == 16 else "u1").tobytes()
                   for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth,
                                                  2 if a.ndim == 3 else 0, 0, 0, 0))
                     + chunk(b"tRNS", b"".join(struct.pack(">H", v) for v in key))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("grey", [False, True])
def test_a_transparent_colour_is_white_at_16_bits_as_at_8(tmp_path, grey):
    a = rng().integers(0, 256, (30, 40) if grey else (30, 40, 3)).astype(np.uint8)
    key = tuple(int(v) for v in np.atleast_1d(a[10, 10]))
    _png_with_key(tmp_path / "k8.png", a, key)
    _png_with_key(tmp_path / "k16.png", a.astype(np.uint16) * 257, tuple(v * 257 for v in key))
    eight, sixteen = images.decode(tmp_path / "k8.png"), images.decode(tmp_path / "k16.png")
    assert (eight[10, 10] == 255).all() and (sixteen[10, 10] == 65535).all()
    np.testing.assert_array_equal(sixteen, eight.astype(np.uint16) * 257)

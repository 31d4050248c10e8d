"""Issue 22 finding 5: embedded colour profiles are converted to sRGB by the one decoder, so
the model, p2p-eval and every viewer see the same colours; p2p-process writes no profile.

The Adobe RGB (1998) profile is built here (an ICC v2 matrix/TRC profile: the published
primaries adapted to D50, gamma 563/256), and the expected sRGB values are computed by hand
from the colour spaces' definitions (Adobe RGB (1998) Color Image Encoding, 2005; IEC
61966-2-1), not by LittleCMS, which the decoder uses.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image, ImageCms

from onnx_models import metadata
from p2p.cli.eval import main as eval_cli
from p2p.cli.process import main as process_cli
from p2p.runtime import images
from p2p.runtime.errors import ImageError

ADOBE_GAMMA = 563 / 256
# Adobe RGB (1998) RGB -> XYZ (D65), and XYZ (D65) -> linear sRGB (IEC 61966-2-1).
ADOBE_TO_XYZ = np.array([[0.5767309, 0.1855540, 0.1881852],
                         [0.2973769, 0.6273491, 0.0752741],
                         [0.0270343, 0.0706872, 0.9911085]])
XYZ_TO_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                        [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])


def icc_profile(name: str, colorants, gamma: float) -> bytes:
    """A minimal ICC v2 RGB display profile: desc, cprt, wtpt, r/g/bXYZ, r/g/bTRC."""
    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(v):
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(name) + 1) + name.encode() + b"\0"
            + b"\0" * 8 + b"\0\0\0" + b"\0" * 67)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    d50 = (0.9642, 1.0, 0.8249)
    tags = [(b"desc", desc), (b"cprt", b"text\0\0\0\0test\0"), (b"wtpt", xyz(d50)),
            (b"rXYZ", xyz(colorants[0])), (b"gXYZ", xyz(colorants[1])),
            (b"bXYZ", xyz(colorants[2])), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + b"".join(s15(c) for c in d50))
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


# The published Adobe RGB (1998) colorants, Bradford-adapted to the D50 PCS.
ADOBE = icc_profile("Adobe RGB (1998)", [(0.60974, 0.31111, 0.01947),
                                         (0.20528, 0.62567, 0.06087),
                                         (0.14919, 0.06322, 0.74457)], ADOBE_GAMMA)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def adobe_to_srgb(rgb8: np.ndarray) -> np.ndarray:
    """By hand: decode Adobe RGB's gamma, go through XYZ (both spaces are D65, so relative
    colorimetric needs no adaptation), encode sRGB's curve; 8-bit, out-of-gamut clipped."""
    lin = (rgb8 / 255.0) ** ADOBE_GAMMA
    s = np.clip(lin @ ADOBE_TO_XYZ.T @ XYZ_TO_SRGB.T, 0, 1)
    enc = np.where(s <= 0.0031308, 12.92 * s, 1.055 * s ** (1 / 2.4) - 0.055)
    return np.rint(enc * 255).astype(np.uint8)


def photo(seed: int = 0, h: int = 32, w: int = 48) -> np.ndarray:
    """Smooth colours across the gamut, saturated ones included."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (h + w - 2)], -1)
    return np.clip(a + np.random.default_rng(seed).integers(-10, 11, a.shape), 0,
                   255).astype(np.uint8)


def test_the_built_profile_is_adobe_rgb_to_littlecms():
    prof = ImageCms.ImageCmsProfile(io.BytesIO(ADOBE))
    assert ImageCms.getProfileDescription(prof).strip() == "Adobe RGB (1998)"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_adobe_rgb_image_decodes_to_its_srgb_values(tmp_path, fmt):
    rgb = photo()
    path = tmp_path / f"adobe.{fmt.lower()}"
    Image.fromarray(rgb).save(path, fmt, icc_profile=ADOBE,
                              **({"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}))
    with Image.open(path) as im:  # what the file holds, read as a JPEG decoder gives it
        raw = np.asarray(im.convert("RGB"))
    got = images.decode(path)
    want = adobe_to_srgb(raw)
    assert np.abs(got.astype(int) - want).max() <= 1
    # and the profile matters: the raw values are far from what viewers show
    assert np.abs(raw.astype(int) - want).max() > 40


def test_adobe_image_and_its_srgb_twin_give_the_model_the_same_input(tmp_path):
    rgb = photo(1)
    Image.fromarray(rgb).save(tmp_path / "adobe.png", icc_profile=ADOBE)
    Image.fromarray(adobe_to_srgb(rgb)).save(tmp_path / "srgb.png", icc_profile=SRGB)
    meta = metadata(dynamic_size=True, size_multiple=8)
    a = images.prepare(tmp_path / "adobe.png", meta, "none").array
    b = images.prepare(tmp_path / "srgb.png", meta, "none").array
    assert np.abs(a - b).max() <= 2 / 255 + 1e-6  # within 1 level of 255 on [-1, 1]


def test_eval_of_an_image_and_its_profile_converted_twin_is_near_identical(tmp_path):
    for d in ("p", "t", "stripped"):
        (tmp_path / d).mkdir()
    for i in range(2):
        rgb = photo(i)
        Image.fromarray(rgb).save(tmp_path / "p" / f"{i}.png", icc_profile=ADOBE)
        Image.fromarray(adobe_to_srgb(rgb)).save(tmp_path / "t" / f"{i}.png")
        Image.fromarray(rgb).save(tmp_path / "stripped" / f"{i}.png")  # profile ignored

    def psnr(pred):
        r = CliRunner().invoke(eval_cli, [str(tmp_path / pred), str(tmp_path / "t"), "--json",
                                          str(tmp_path / "s.json"), "--quiet"])
        assert r.exit_code == 0, r.output
        return json.loads((tmp_path / "s.json").read_text())["psnr"]

    assert psnr("p") > 50  # differences of at most one level, in a few pixels
    assert psnr("stripped") < 30  # what ignoring the profile scored


def test_grayscale_writes_no_rgb_profile_from_srgb_or_adobe_jpegs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rgb = photo(2)
    Image.fromarray(rgb).save(src / "srgb.jpg", quality=100, subsampling=0, icc_profile=SRGB)
    Image.fromarray(rgb).save(src / "adobe.jpg", quality=100, subsampling=0, icc_profile=ADOBE)
    r = CliRunner().invoke(process_cli, ["grayscale", "--input", str(src), "--output",
                                         str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    for name in ("srgb", "adobe"):
        data = (tmp_path / "out" / f"{name}.png").read_bytes()
        assert b"iCCP" not in data  # libpng rejects an RGB profile on a greyscale PNG
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == "L" and "icc_profile" not in im.info
            grey = np.asarray(im)
        with Image.open(src / f"{name}.jpg") as im:
            raw = np.asarray(im.convert("RGB"))
        shown = adobe_to_srgb(raw) if name == "adobe" else raw
        luma = shown.astype(np.float64) @ [0.299, 0.587, 0.114]
        assert np.abs(grey - luma).max() <= 1.5, name


def test_16_bit_colour_with_a_non_srgb_profile_is_refused_not_ignored(tmp_path):
    a = (photo(3).astype(np.uint16) * 257)
    path = tmp_path / "adobe16.tif"
    tifffile.imwrite(path, a, photometric="rgb", extratags=[(34675, 7, len(ADOBE), ADOBE, True)])
    with pytest.raises(ImageError, match=rf"^{path}: a uint16 image with an embedded 'Adobe "
                                         r"RGB \(1998\)' colour profile"):
        images.decode(path)
    srgb16 = tmp_path / "srgb16.tif"
    tifffile.imwrite(srgb16, a, photometric="rgb", extratags=[(34675, 7, len(SRGB), SRGB, True)])
    assert np.array_equal(images.decode(srgb16), a)

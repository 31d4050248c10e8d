"""Georeferenced rasters through p2p-translate: GeoTIFF in -> GeoTIFF out (CRS, transform,
size; tiled and compressed), 1/3/4-band uint8 inputs, streamed window by window with a
bounded number of rows in memory, and the refusals."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnx_models import conv_model, identity_model
from p2p.cli.translate import main
from p2p.runtime import images, raster, tiles

rasterio = pytest.importorskip("rasterio", reason="GeoTIFF streaming needs p2p[geo]")
from rasterio.crs import CRS  # noqa: E402
from affine import Affine  # noqa: E402  (rasterio's own dependency)

CRS_UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)  # 10 m pixels, UTM 33N


def translate(*args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--quiet", "--precision", "fp32"])


def geotiff(path, h, w, bands=3, dtype="uint8", seed=0, tiled=True):
    """A generated raster with a CRS and a geotransform; returns its (h, w, bands) pixels."""
    rng = np.random.default_rng(seed)
    hi = 256 if dtype == "uint8" else 65536
    a = rng.integers(0, hi, (bands, h, w)).astype(dtype)
    opts = dict(tiled=True, blockxsize=64, blockysize=64) if tiled else {}
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=bands, dtype=dtype,
                       crs=CRS_UTM, transform=TRANSFORM, **opts) as ds:
        ds.write(a)
    return a.transpose(1, 2, 0)


# The engine's caches in this session's temp folder, not the user's ~/.cache (conftest.py).
pytestmark = pytest.mark.usefixtures("session_cache")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"ident": identity_model(d / "ident.onnx", image_size=32),
            "btoa": identity_model(d / "btoa.onnx", image_size=32, direction="BtoA"),
            "conv": conv_model(d / "conv.onnx", dynamic_size=True, size_multiple=8)}


def test_geotiff_round_trip_keeps_crs_transform_and_size(models, tmp_path):
    a = geotiff(tmp_path / "scene.tif", 150, 230)
    r = translate(tmp_path / "scene.tif", "-m", models["ident"], "--tile", "--format", "tif",
                  "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "out" / "scene.tif") as ds:
        assert ds.crs == CRS_UTM and ds.transform == TRANSFORM
        assert (ds.height, ds.width, ds.count) == (150, 230, 3) and ds.dtypes[0] == "uint8"
        assert ds.profile["tiled"] and ds.block_shapes[0] == (raster.BLOCK, raster.BLOCK)
        assert ds.compression.name.lower() == "deflate"
        out = ds.read().transpose(1, 2, 0)
    np.testing.assert_array_equal(out, a)  # identity model, fixed 32 px tiles: exact
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene.tif"]  # no temps


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_1_3_and_4_band_uint8_rasters(models, tmp_path, bands):
    a = geotiff(tmp_path / "s.tif", 70, 90, bands=bands, tiled=False)
    r = translate(tmp_path / "s.tif", "-m", models["ident"], "--tile", "--format", "tif")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "s-translated" / "s.tif") as ds:
        assert ds.count == 3 and ds.crs == CRS_UTM and ds.transform == TRANSFORM
        out = ds.read().transpose(1, 2, 0)
    # one band is repeated into the model's three; a 4th band tagged alpha (what GDAL tags
    # a 4-band uint8 GTiff) is composited on white, as the image decoder does
    from p2p.runtime import pixels

    with rasterio.open(tmp_path / "s.tif") as ds:
        assert bands < 4 or ds.colorinterp[3].name == "alpha"
    want = (np.repeat(a, 3, axis=2) if bands == 1 else a if bands == 3
            else pixels.on_white(a[:, :, :3], a[:, :, 3:]))
    np.testing.assert_array_equal(out, want)


def test_a_small_geotiff_without_tile_keeps_its_georeferencing(models, tmp_path):
    geotiff(tmp_path / "s.tif", 40, 56)
    r = translate(tmp_path / "s.tif", "-m", models["conv"], "--format", "tif")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "s-translated" / "s.tif") as ds:
        assert (ds.crs, ds.transform, ds.height, ds.width) == (CRS_UTM, TRANSFORM, 40, 56)


def test_png_from_a_geotiff_matches_the_geotiff_output(models, tmp_path):
    geotiff(tmp_path / "s.tif", 64, 80)
    for fmt in ("png", "tif"):
        r = translate(tmp_path / "s.tif", "-m", models["conv"], "--tile", "--format", fmt)
        assert r.exit_code == 0, r.output
    png = np.asarray(Image.open(tmp_path / "s-translated" / "s.png"))
    with rasterio.open(tmp_path / "s-translated" / "s.tif") as ds:
        np.testing.assert_array_equal(ds.read().transpose(1, 2, 0), png)


def test_an_a_b_pair_raster_is_split_by_the_rule_of_every_image(models, tmp_path):
    a = geotiff(tmp_path / "pair.tif", 40, 80)
    r = translate(tmp_path / "pair.tif", "-m", models["btoa"], "--tile", "--format", "tif")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "pair-translated" / "pair.tif") as ds:
        assert (ds.height, ds.width) == (40, 40)
        # the right half's own georeferencing: 40 pixels of 10 m east of the input's origin
        assert ds.transform == Affine(10.0, 0.0, 500400.0, 0.0, -10.0, 4600000.0)
        np.testing.assert_array_equal(ds.read().transpose(1, 2, 0), a[:, 40:])


def test_memory_is_bounded_strip_by_strip(models, tmp_path, monkeypatch):
    """A tall raster is read one strip of tile rows at a time (never more rows than a tile),
    blended with at most tile + step rows held, and written in block-aligned strips."""
    h, w = 1000, 70
    geotiff(tmp_path / "tall.tif", h, w, seed=3)
    reads, held, writes = [], [], []
    read_rows = raster.RasterReader.read_rows
    monkeypatch.setattr(raster.RasterReader, "read_rows",
                        lambda self, y0, y1: reads.append(y1 - y0) or read_rows(self, y0, y1))
    start = tiles.Blender._start_row

    def start_row(self, r):
        start(self, r)
        held.append(self._acc.shape[1])
    monkeypatch.setattr(tiles.Blender, "_start_row", start_row)
    write = raster.RasterSink._write
    monkeypatch.setattr(raster.RasterSink, "_write",
                        lambda self, y0, b: writes.append((y0, b.shape[1])) or write(self, y0, b))
    r = translate(tmp_path / "tall.tif", "-m", models["conv"], "--tile", "--format", "tif")
    assert r.exit_code == 0, r.output
    grid = tiles.Grid(h, w, 32, tiles.default_overlap(32))
    assert len(reads) == len(grid.ys) and max(reads) == 32  # one 32-row strip per tile row
    assert max(held) <= 32 + 24  # tile + step rows of accumulators, whatever the height
    assert [y0 for y0, _ in writes] == list(range(0, h, raster.BLOCK))
    assert all(n <= raster.BLOCK for _, n in writes) and sum(n for _, n in writes) == h


def test_a_raster_too_large_to_hold_is_refused_unless_it_streams(models, tmp_path, monkeypatch):
    geotiff(tmp_path / "big.tif", 80, 100)
    monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", "5000")  # 8000 pixels: over the limit
    r = translate(tmp_path / "big.tif", "-m", models["conv"], "--tile", "--format", "png")
    assert r.exit_code == 1
    assert (f"{tmp_path / 'big.tif'}: a 100x80 PNG output would be held whole in memory; "
            "--format tif streams it to disk") in r.output
    r = translate(tmp_path / "big.tif", "-m", models["conv"], "--tile", "--format", "tif")
    assert r.exit_code == 0, r.output  # streamed: no whole image in memory, no limit
    monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", "100000")
    monkeypatch.setenv("P2P_MAX_WHOLE_PIXELS", "5000")
    r = translate(tmp_path / "big.tif", "-m", models["conv"], "-o", tmp_path / "w")
    assert r.exit_code == 1 and "100x80 is too large to run whole" in r.output
    assert "--tile runs it in 32px tiles" in r.output


def test_16_bit_rasters_are_read_at_their_depth(models, tmp_path):
    """A 16-bit GeoTIFF through an 8-bit model: read at its own depth (65535 is white, as
    images.normalize reads any depth by its natural range), written at the model's output
    depth with its georeferencing: an identity model gives round(v / 257)."""
    a = geotiff(tmp_path / "d.tif", 40, 40, dtype="uint16")
    r = translate(tmp_path / "d.tif", "-m", models["ident"], "--tile", "--format", "tif",
                  "--precision", "fp32")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "d-translated" / "d.tif") as ds:
        assert ds.crs == CRS_UTM and ds.transform == TRANSFORM and ds.dtypes[0] == "uint8"
        out = ds.read().transpose(1, 2, 0)
    assert np.abs(out.astype(int) - np.rint(a / 257.0).astype(int)).max() <= 1


def test_a_corrupt_raster_fails_alone(models, tmp_path):
    geotiff(tmp_path / "ok.tif", 40, 40)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 100)
    r = translate(tmp_path / "ok.tif", tmp_path / "bad.tif", "-m", models["conv"], "--tile",
                  "--format", "tif", "-o", tmp_path / "out")
    assert r.exit_code == 1 and "translated 1, skipped 0, failed 1" in r.output
    assert f"failed: {tmp_path / 'bad.tif'}: cannot read as a raster" in r.output


def test_without_rasterio_tiffs_decode_whole_and_the_run_works(models, tmp_path):
    """No p2p[geo]: --tile on a TIFF decodes it with Pillow (no georeferencing to keep),
    and --format tif is a plain TIFF; nothing fails for want of rasterio."""
    from blocking import cli_without

    a = geotiff(tmp_path / "s.tif", 40, 56)
    r = cli_without(["rasterio"], "translate", "p2p-translate", tmp_path / "s.tif", "-m",
                    models["ident"], "--tile", "--format", "tif", "-q", "--precision", "fp32",
                    env={**os.environ, "P2P_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "no rasterio: pip install p2p[geo] to stream" in r.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "s-translated" / "s.tif")), a)


@pytest.mark.parametrize("bad", ["over", "nan"])
def test_float_rasters_follow_the_decoders_rule_under_tile(models, tmp_path, bad):
    """A float raster is 0..1 and finite, streamed or not: 0..255 or a NaN is one line naming
    the file, exit 1, no output (it was translated to wrong values with exit 0)."""
    a = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    if bad == "over":
        a *= 255
    else:
        a[0, 5, 5] = np.nan
    path = tmp_path / "f.tif"
    with rasterio.open(path, "w", driver="GTiff", height=40, width=40, count=3,
                       dtype="float32", crs=CRS_UTM, transform=TRANSFORM) as ds:
        ds.write(a)
    r = translate(path, "-m", models["ident"], "--tile", "--format", "tif")
    assert r.exit_code == 1, r.output
    why = "outside 0..1" if bad == "over" else "NaN or Inf"
    assert f"failed: {path}" in r.output and why in r.output
    assert not (tmp_path / "f-translated" / "f.tif").exists()


def test_an_alpha_band_is_composited_on_white_as_the_decoder_does(tmp_path):
    """One rule for alpha: the streamed reader gives what images.decode gives (Pillow's
    RGBA on white) for a raster whose 4th band is tagged alpha."""
    from rasterio.enums import ColorInterp

    from p2p.runtime import images

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (4, 24, 32)).astype(np.uint8)
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", height=24, width=32, count=4, dtype="uint8",
                       crs=CRS_UTM, transform=TRANSFORM, photometric="RGB", alpha="YES") as ds:
        ds.write(a)
    with rasterio.open(path) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
    reader = raster.RasterReader(path)
    try:
        streamed = reader.read_rows(0, 24)
    finally:
        reader.close()
    decoded = images.decode(path)
    assert streamed.shape == decoded.shape == (24, 32, 3)
    assert np.abs(streamed.astype(int) - decoded.astype(int)).max() <= 1
    assert np.abs(streamed.astype(int) - a[:3].transpose(1, 2, 0)).max() > 10  # not dropped


def test_tile_failures_name_the_file_once_with_the_reason(models, tmp_path):
    """A band mismatch under --tile names the file once; a truncated GeoTIFF carries GDAL's
    reason (rasterio's chained exception), not "See previous exception for details"."""
    geotiff(tmp_path / "five.tif", 40, 40, bands=5)
    geotiff(tmp_path / "whole.tif", 128, 128)
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(data[:len(data) // 3])
    r = translate(tmp_path / "five.tif", tmp_path / "trunc.tif", "-m", models["conv"],
                  "--tile", "--format", "tif", "-o", tmp_path / "out")
    assert r.exit_code == 1 and "translated 0, skipped 0, failed 2" in r.output, r.output
    lines = {ln.split(": ", 2)[1]: ln for ln in r.output.splitlines()
             if ln.startswith("failed: ")}
    five, trunc = str(tmp_path / "five.tif"), str(tmp_path / "trunc.tif")
    assert lines[five] == f"failed: {five}: 5 bands, the model takes 3", r.output
    assert lines[trunc].startswith(f"failed: {trunc}: cannot read rows 0..") and \
        "IReadBlock failed" in lines[trunc] and "previous exception" not in lines[trunc], \
        r.output


def test_tiffs_whose_tags_change_their_pixels_read_the_same_streamed(models, tmp_path):
    """GDAL's strips are the raw samples: a palette's indices, 'white is zero', the
    Orientation tag and a non-sRGB colour profile changed the streamed (--tile) result
    against the decoder's (exit 0). Such TIFFs are decoded whole, as without --tile; an
    int16 raster is refused in the decoder's words, not with a KeyError."""
    import tifffile

    from test_icc import ADOBE

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    grey = rgb[..., 0]
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb).quantize(16).save(src / "palette.tif")
    tifffile.imwrite(src / "white0.tif", 255 - grey, photometric="miniswhite")
    tifffile.imwrite(src / "turned.tif", np.ascontiguousarray(np.rot90(rgb)), photometric="rgb",
                     extratags=[(274, "H", 1, 6, True)])
    Image.fromarray(rgb).save(src / "adobe.tif", icc_profile=ADOBE)
    for name in ("palette", "white0", "turned", "adobe"):
        assert raster.decoder_only(src / f"{name}.tif"), name
    geotiff(src / "plain.tif", 64, 64)
    assert raster.decoder_only(src / "plain.tif") is None
    # The identity model in 32 px tiles gives back exactly what it reads: what the image
    # decoder makes of each file (grey repeated into the model's 3 bands).
    r = translate(src, "-m", models["ident"], "--format", "tif", "--tile", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    for name in ("palette", "white0", "turned", "adobe", "plain"):
        want = images.match_bands(images.decode(src / f"{name}.tif"), 3)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{name}.tif"), want,
                                      err_msg=name)
    tifffile.imwrite(tmp_path / "i16.tif", grey.astype(np.int16))
    r = translate(tmp_path / "i16.tif", "-m", models["conv"], "--tile")
    assert r.exit_code == 1
    assert "i16.tif: int16 samples (p2p reads 8-bit, 16-bit and float images)" in r.output


def test_an_a_b_pair_raster_keeps_its_half_georeferenced_without_tile(models, tmp_path):
    geotiff(tmp_path / "pair.tif", 40, 80)
    r = translate(tmp_path / "pair.tif", "-m", models["btoa"], "--format", "tif")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "pair-translated" / "pair.tif") as ds:
        assert (ds.height, ds.width, ds.crs) == (40, 40, CRS_UTM)
        assert ds.transform == Affine(10.0, 0.0, 500400.0, 0.0, -10.0, 4600000.0)
    r = translate(tmp_path / "pair.tif", "-m", models["btoa"], "--format", "tif", "--split",
                  "left", "-o", tmp_path / "left")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "left" / "pair.tif") as ds:  # the left half: the origin
        assert (ds.crs, ds.transform) == (CRS_UTM, TRANSFORM)

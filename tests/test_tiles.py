"""p2p-translate --tile: the grid, the blend, the seam measure on a real photo, fixed-size and
dynamic models, batches across images, and the refusals (too large without --tile)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnx_models import conv_model, identity_model, metadata, norm_model
from p2p.cli.translate import main
from p2p.runtime import images, pipeline, tiles
from p2p.runtime.engine import Engine
from p2p.runtime.tiles import Blender, Grid, seam_score, starts


def translate(*args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--quiet", "--precision", "fp32"])


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


# The engine's caches in this session's temp folder, not the user's ~/.cache (conftest.py).
pytestmark = pytest.mark.usefixtures("session_cache")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"conv": conv_model(d / "conv.onnx", dynamic_size=True, size_multiple=8),
            "fixed": conv_model(d / "fixed.onnx", image_size=32),
            "norm": norm_model(d / "norm.onnx", dynamic_size=True, size_multiple=8),
            "ident": identity_model(d / "ident.onnx", image_size=32),
            "lab": identity_model(d / "lab.onnx", dynamic_size=True, color_space="lab",
                                  in_channels=1, out_channels=2)}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real 512x512 photograph (scikit-image's astronaut): 16x16 tiles of a 32 px model."""
    data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


# --- the grid and the blend ------------------------------------------------------------------

@pytest.mark.parametrize("length, tile, overlap", [(32, 32, 8), (33, 32, 8), (100, 32, 8),
                                                   (1000, 256, 64), (20, 32, 8), (97, 32, 0)])
def test_tiles_cover_every_pixel_with_at_least_the_overlap(length, tile, overlap):
    s = starts(length, tile, overlap)
    assert s[0] == 0 and s == sorted(s)
    assert s[-1] + tile >= length and (length <= tile or s[-1] + tile == length)
    for a, b in zip(s, s[1:]):
        assert a + tile - b >= overlap  # neighbours share at least the overlap, never a gap


def test_the_blend_is_a_partition_of_unity():
    """Every tile's output a constant c: the blended image is c everywhere (weights sum to 1,
    whatever the irregular last tiles), and rows come out in order, each once."""
    meta = metadata(dynamic_size=True, image_size=32)
    grid = Grid(75, 90, 32, 8)
    got, rows = np.full((75, 90, 3), -1), []

    def emit(y0, a):
        rows.append((y0, len(a)))
        got[y0:y0 + len(a)] = a

    b = Blender(grid, 3, meta, emit)
    for r, y in enumerate(grid.ys):
        for c, x in enumerate(grid.xs):
            b.put(tiles.Tile(r, c, y, x, min(32, 75 - y), min(32, 90 - x)),
                  np.full((3, 32, 32), 0.2, np.float32))
    assert (got == round((0.2 + 1) * 127.5)).all()
    assert [y0 for y0, _ in rows] == np.cumsum([0] + [n for _, n in rows[:-1]]).tolist()
    assert sum(n for _, n in rows) == 75 == b.emitted


def test_an_overlap_over_half_the_tile_is_one_line_before_the_engine_loads(
        models, tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    loaded = []
    real_engine = pipeline.Engine

    def engine(*args, **kw):
        loaded.append(args[0])
        return real_engine(*args, **kw)

    monkeypatch.setattr(pipeline, "Engine", engine)
    # The tile size is the model file's (its metadata, read without a backend): 32 px here.
    for bad in ("17", "32", "40"):
        r = translate(tmp_path / "a.png", "-m", models["conv"], "--tile", "--tile-overlap", bad,
                      "-o", tmp_path / "out")
        assert r.exit_code == 1, r.output
        assert r.output == (f"Error: --tile-overlap {bad} px: must be 0 .. 16 (half of "
                            f"{models['conv']}'s 32 px tile; the default is 8)\n")
    assert loaded == [] and not (tmp_path / "out").exists()
    r = translate(tmp_path / "a.png", "-m", models["conv"], "--tile", "--tile-overlap", "16",
                  "-o", tmp_path / "out")
    assert r.exit_code == 0 and loaded == [models["conv"]], r.output
    assert (tmp_path / "out" / "a.png").is_file()
    r = translate(tmp_path / "a.png", "-m", models["conv"], "--tile-overlap", "8")
    assert r.exit_code == 2 and "--tile-overlap needs --tile" in r.output


def test_tiles_of_a_convolution_match_the_whole_image(models, tmp_path):
    """A 3x3 conv + tanh has no statistics: blended tiles give the whole-image output,
    within the weight the blend leaves to a tile's outermost pixel (sin^2(pi/32) x 255)."""
    a = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "n.png")
    assert translate(tmp_path / "n.png", "-m", models["conv"], "-o", tmp_path / "w").exit_code == 0
    r = translate(tmp_path / "n.png", "-m", models["conv"], "-o", tmp_path / "t", "--tile")
    assert r.exit_code == 0, r.output
    whole, tiled = read(tmp_path / "w/n.png"), read(tmp_path / "t/n.png")
    assert tiled.shape == whole.shape == a.shape
    # the image's own last row/column: padded by reflection whole, by zeros in a tile
    d = np.abs(whole - tiled)[:-1, :-1]
    assert d.max() <= 3 and d.mean() < 0.05, (d.max(), d.mean())


def test_a_fixed_size_model_tiles_at_its_size_and_keeps_the_input_size(models, tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "n.png")
    r = translate(tmp_path / "n.png", "-m", models["ident"], "-o", tmp_path / "t", "--tile")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(read(tmp_path / "t/n.png"), a)  # identity: exact
    r = translate(tmp_path / "n.png", "-m", models["fixed"], "-o", tmp_path / "f", "--tile")
    assert r.exit_code == 0
    r = translate(tmp_path / "n.png", "-m", models["conv"], "-o", tmp_path / "d", "--tile")
    assert r.exit_code == 0  # same weights (seed 0), dynamic: the same tiles, the same blend
    np.testing.assert_allclose(read(tmp_path / "f/n.png"), read(tmp_path / "d/n.png"), atol=1)


# --- seams -----------------------------------------------------------------------------------

def test_seam_measure_sees_a_hand_cut_grid_and_not_the_blended_one(models, photo, tmp_path):
    """A per-image-normalised model on a real photo: hand-cut tiles (no overlap, no blend)
    show the grid; --tile's blend reads within 10% of the whole-image run (issue 18)."""
    out = {}
    for name, extra in (("whole", []), ("cut", ["--tile", "--tile-overlap", "0"]),
                        ("tiled", ["--tile"])):
        r = translate(photo, "-m", models["norm"], "-o", tmp_path / name, *extra)
        assert r.exit_code == 0, r.output
        out[name] = seam_score(read(tmp_path / name / "astronaut.png"))
    assert out["cut"] > 3 * out["whole"], out  # measured 7.0 vs 1.35
    assert out["tiled"] <= 1.1 * out["whole"], out  # measured 1.21
    assert seam_score(read(photo)) < 2.0  # the photo itself has no grid


def test_seam_measure_on_generated_grids():
    rng = np.random.default_rng(0)
    smooth = rng.normal(0, 1, (300, 300)).cumsum(0).cumsum(1)
    smooth = (smooth - smooth.min()) / np.ptp(smooth) * 255
    grid = smooth.copy()
    grid[:, ::24] += 40  # a seam every 24 columns
    assert seam_score(smooth) < 2 < 4 < seam_score(grid), (seam_score(smooth), seam_score(grid))
    assert seam_score(np.zeros((100, 100))) == 1.0  # no gradient: no grid, not NaN


# --- batching and the pipeline ---------------------------------------------------------------

def test_batches_mix_tiles_across_images(models, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i, (h, w) in enumerate([(40, 40), (32, 56), (20, 20)]):  # 4 + 2 + 1 tiles
        Image.fromarray(np.full((h, w, 3), 50 * i, np.uint8)).save(src / f"{i}.png")
    sizes = []
    submit = Engine.submit  # what the pipeline calls
    monkeypatch.setattr(Engine, "submit", lambda self, x: sizes.append(len(x)) or submit(self, x))
    r = translate(src, "-m", models["ident"], "--tile", "-b", "5")
    assert r.exit_code == 0, r.output
    assert sizes == [5, 2]  # 7 tiles of three images in two batches
    assert re.search(r"translated 3, skipped 0, failed 0 \([\d.]+ images/s, [\d.]+ tiles/s on",
                     r.output), r.output
    for i in range(3):
        assert (read(tmp_path / "in-translated" / f"{i}.png") == 50 * i).all()


def test_a_failing_tile_fails_its_image_alone(models, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "0.png")
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(src / "1.png")
    submit = Engine.submit  # what the pipeline calls

    def flaky(self, x):
        if (x > 0.5).any():
            raise RuntimeError("boom")
        return submit(self, x)

    monkeypatch.setattr(Engine, "submit", flaky)
    r = translate(src, "-m", models["ident"], "--tile")
    assert r.exit_code == 1
    assert "translated 1, skipped 0, failed 1" in r.output
    assert f"{src / '1.png'}: inference failed: boom" in r.output
    out = tmp_path / "in-translated"
    assert sorted(p.name for p in out.iterdir()) == ["0.png"]  # no partial file, no temp


# --- refusals --------------------------------------------------------------------------------

def test_too_large_for_a_whole_image_run_is_refused_naming_tile(models, tmp_path, monkeypatch):
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setenv("P2P_MAX_WHOLE_PIXELS", "1000")
    r = translate(tmp_path / "big.png", tmp_path / "small.png", "-m", models["conv"],
                  "-o", tmp_path / "w")
    assert r.exit_code == 1
    assert "translated 1, skipped 0, failed 1" in r.output
    assert (f"failed: {tmp_path / 'big.png'}: 80x60 is too large to run whole on this "
            "dynamic-size model (over 1000 pixels, P2P_MAX_WHOLE_PIXELS); --tile runs it in "
            "32px tiles") in r.output
    r = translate(tmp_path / "big.png", "-m", models["conv"], "-o", tmp_path / "t", "--tile")
    assert r.exit_code == 0 and read(tmp_path / "t/big.png").shape == (60, 80, 3)


def test_lab_models_are_refused_with_tile(models, tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    r = translate(tmp_path / "a.png", "-m", models["lab"], "--tile")
    assert r.exit_code == 1 and "--tile does not run colorization (Lab) models" in r.output
    assert "Traceback" not in r.output


def test_tif_format_for_a_plain_input(models, tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "n.png")
    r = translate(tmp_path / "n.png", "-m", models["ident"], "--format", "tif", "--tile")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(read(tmp_path / "n-translated" / "n.tif"), a)
    r = translate(tmp_path / "n.png", "-m", models["conv"], "--format", "tif", "-o",
                  tmp_path / "plain")
    assert r.exit_code == 0 and read(tmp_path / "plain" / "n.tif").shape == a.shape


def test_normalize_and_denormalize_round_trip():
    """Tiles and raster windows convert through images.normalize/denormalize: 8-bit exact
    both ways, one band repeated for an RGB model, 16-bit read by its natural range, and a
    band count the model cannot take refused (a raster's alpha band is dropped before)."""
    meta = metadata()
    a = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    x = images.normalize(a, meta)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(images.denormalize(x, meta), a)
    assert images.normalize(a[:, :, :1], meta).shape == (3, 16, 16)  # 1 band repeated
    np.testing.assert_allclose(images.normalize(a.astype(np.uint16) * 257, meta), x, atol=1e-6)
    with pytest.raises(images.ImageError, match="4 bands"):
        images.normalize(np.dstack([a, a[:, :, :1]]), meta)


def test_a_bad_whole_pixel_limit_is_one_error_before_any_work(models, tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("P2P_MAX_WHOLE_PIXELS", "lots")
    r = translate(tmp_path / "a.png", "-m", models["conv"])
    assert r.exit_code == 1 and "P2P_MAX_WHOLE_PIXELS='lots' is not a positive integer" in r.output
    assert not (tmp_path / "a-translated").exists()

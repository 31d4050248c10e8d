"""Issue 18 item 4: any band count. 1-band greyscale and 4-band RGB + near-infrared images
train (``--in-channels N --out-channels M``), export and translate; multi-band TIFFs decode
with every band; a mismatch between the data and the flags is one line naming a file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from onnx_models import identity_model
from p2p.cli.export import main as export_cli
from p2p.cli.train import main as train_cli
from p2p.cli.translate import main as translate_cli
from p2p.runtime import images
from p2p.runtime.engine import Engine

TINY = ["--image-size", "32", "--load-size", "36", "--ngf", "4", "--ndf", "4", "--quiet",
        "--threads", "1", "--workers", "0", "--max-steps", "3"]


def invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def scene(seed: int, bands: int = 4, size: int = 32) -> np.ndarray:
    """An RGB + NIR-like scene: smooth fields per band, 8-bit."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    planes = [np.sin(xx * r.uniform(2, 6) + yy * r.uniform(2, 6) + r.uniform(0, 6))
              for _ in range(bands)]
    return np.clip(np.stack(planes, -1) * 120 + 128, 0, 255).astype(np.uint8)


def test_multi_band_tiffs_decode_with_every_band(tmp_path):
    a = scene(0, 5)
    tifffile.imwrite(tmp_path / "contig.tif", a, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "planar.tif", a.transpose(2, 0, 1), photometric="minisblack",
                     planarconfig="separate")
    rgbn = scene(1, 4)  # RGB + an unspecified extra sample: Pillow opens it as RGBX
    tifffile.imwrite(tmp_path / "rgbn.tif", rgbn, photometric="rgb", extrasamples=[0])
    rgba = scene(2, 4)  # RGB + unassociated alpha: alpha, composited on white
    rgba[..., 3] = 255
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=[2])
    assert np.array_equal(images.decode(tmp_path / "contig.tif"), a)
    assert np.array_equal(images.decode(tmp_path / "planar.tif"), a)
    assert np.array_equal(images.decode(tmp_path / "rgbn.tif"), rgbn)
    assert np.array_equal(images.decode(tmp_path / "rgba.tif"), rgba[..., :3])


def test_4_band_scene_trains_exports_and_translates(tmp_path):
    """RGB+NIR A|B pairs (one 4-band TIFF each, 64x32): a 4 -> 4 model; outputs are 4-band
    TIFFs (PNG holds 1 or 3 bands) equal to the engine's output denormalised."""
    train = tmp_path / "d" / "train"
    train.mkdir(parents=True)
    for i in range(4):
        a = scene(i)
        tifffile.imwrite(train / f"{i}.tif", np.concatenate([a, 255 - a], 1),
                         photometric="minisblack", planarconfig="contig")
    run = tmp_path / "run"
    r = invoke(train_cli, "--data", tmp_path / "d", "--in-channels", 4, "--out-channels", 4,
               *TINY, "-o", run)
    assert r.exit_code == 0, r.output
    model = tmp_path / "m.onnx"
    r = invoke(export_cli, run, "-o", model, "--quiet")
    assert r.exit_code == 0, r.output
    engine = Engine(model, "cpu", cache_dir=tmp_path / "c")
    assert (engine.metadata.in_channels, engine.metadata.out_channels) == (4, 4)
    r = invoke(translate_cli, train, "--model", model, "-o", tmp_path / "out", "-q",
               "--provider", "cpu")
    assert r.exit_code == 0, r.output
    out = tifffile.imread(tmp_path / "out" / "0.tif")
    assert out.shape == (32, 32, 4) and out.dtype == np.uint8
    prep = images.prepare(train / "0.tif", engine.metadata)  # auto split: the A half
    assert prep.half == "left" and prep.array.shape == (4, 32, 32)
    assert np.array_equal(out, images.denormalize(engine.run(prep.array[None])[0],
                                                  engine.metadata))
    r = invoke(translate_cli, train, "--model", model, "-o", tmp_path / "png", "-q",
               "--format", "png")
    assert r.exit_code == 1
    assert r.output.strip().endswith("png holds 1 or 3 bands, not 4: use --format tif")


def test_1_band_greyscale_trains_and_translates_to_greyscale(tmp_path):
    train = tmp_path / "d" / "train"
    train.mkdir(parents=True)
    for i in range(4):
        g = scene(i, 1)[..., 0]
        Image.fromarray(np.concatenate([g, 255 - g], 1)).save(train / f"{i}.png")
    run = tmp_path / "run"
    r = invoke(train_cli, "--data", tmp_path / "d", "--in-channels", 1, "--out-channels", 1,
               *TINY, "-o", run)
    assert r.exit_code == 0, r.output
    model = tmp_path / "m.onnx"
    assert invoke(export_cli, run, "-o", model, "--quiet").exit_code == 0
    r = invoke(translate_cli, train, "--model", model, "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "0.png") as im:
        assert im.mode == "L" and im.size == (32, 32)


def test_bands_that_do_not_fit_the_flags_are_one_line_naming_a_file(tmp_path):
    train = tmp_path / "d" / "train"
    train.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.concatenate([scene(i, 3)] * 2, 1)).save(train / f"{i}.png")
    r = invoke(train_cli, "--data", tmp_path / "d", "--in-channels", 4, "--out-channels", 4,
               *TINY, "-o", tmp_path / "run")
    assert r.exit_code == 1
    errors = [line for line in r.output.splitlines() if line.startswith(("Error", "  "))]
    assert len(errors) == 1, r.output  # one line, not one per file: the flags are wrong
    assert errors[0].startswith(f"Error: {train / '0.png'}: 3 bands, but the model takes 4 "
                                "(--in-channels 4")
    assert errors[0].endswith("1 more of the 2 training images do not fit either")
    assert "Traceback" not in r.output


@pytest.mark.parametrize("bands", [2, 5])
def test_translate_names_an_image_whose_bands_the_model_cannot_take(tmp_path, bands):
    model = identity_model(tmp_path / "m.onnx", dynamic_size=True)  # 3 -> 3
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "x.tif", scene(0, bands), photometric="minisblack",
                     planarconfig="contig")
    Image.fromarray(scene(1, 3)).save(src / "ok.png")
    r = invoke(translate_cli, src, "--model", model, "-o", tmp_path / "out", "-q",
               "--provider", "cpu")
    assert r.exit_code == 1 and "translated 1, skipped 0, failed 1" in r.output
    assert f"failed: {src / 'x.tif'}: {bands} bands, the model takes 3" in r.output


def test_a_band_count_after_alpha_was_composited_says_so(tmp_path):
    """tifffile writes 4 RGB samples with ExtraSamples 'unassociated alpha' unless told
    otherwise: decoded, that is 3 bands (alpha composited on white). Every line that reports
    such a file's band count says where the 4th sample went, and how to keep it as a band;
    an RGBA PNG says it too; a 4th sample tagged unspecified is a band."""
    rgbn = scene(3, 4)
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "x.tif", rgbn, photometric="rgb")  # tifffile's default tag: alpha
    Image.fromarray(rgbn, "RGBA").save(src / "y.png")
    tifffile.imwrite(src / "n.tif", rgbn, photometric="rgb", extrasamples=["unspecified"])
    assert images.decode(src / "x.tif").shape[2] == 3 == images.decode(src / "y.png").shape[2]
    tiff_note = ("3 bands (4 samples: RGB + alpha, composited on white: the TIFF's "
                 "ExtraSamples tag marks sample 4 as alpha; tag it unspecified to keep it as "
                 "a band)")
    model = identity_model(tmp_path / "m.onnx", dynamic_size=True, in_channels=4,
                           out_channels=4)
    r = invoke(translate_cli, src, "--model", model, "-o", tmp_path / "out", "-q",
               "--provider", "cpu")
    assert r.exit_code == 1 and "translated 1, skipped 0, failed 2" in r.output, r.output
    assert f"failed: {src / 'x.tif'}: {tiff_note}, the model takes 4\n" in r.output
    assert (f"failed: {src / 'y.png'}: 3 bands (4 samples: RGB + alpha, composited on "
            "white), the model takes 4\n") in r.output
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "n.tif"), rgbn)
    # p2p-train's check says it the same way.
    train = tmp_path / "d" / "train"
    train.mkdir(parents=True)
    tifffile.imwrite(train / "0.tif", np.concatenate([rgbn, rgbn], 1), photometric="rgb")
    r = invoke(train_cli, "--data", tmp_path / "d", "--in-channels", 4, "--out-channels", 4,
               *TINY, "-o", tmp_path / "run")
    assert r.exit_code == 1
    assert (f"Error: {train / '0.tif'}: 3 bands (4 samples: RGB + alpha, composited on white: "
            "the TIFF's ExtraSamples tag marks sample 4 as alpha; tag it unspecified to keep "
            "it as a band), but the model takes 4") in r.output, r.output
    # Without alpha the count is the count.
    assert images.bands_text(4, src / "n.tif") == "4 bands"
    assert images.bands_text(1, "a frame at 0.5 s") == "1 band"

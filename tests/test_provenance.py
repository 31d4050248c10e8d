"""Which input and model made an output (runtime/provenance.py): every output carries the
record, and a rerun skips an existing output as done only when this input and this model
made it; another input's or another model's is refused in one line before the model loads,
never passed off as this run's (exit 0 with someone else's result)."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnx_models import conv_model, identity_model
from p2p.cli.translate import main
from p2p.runtime import provenance
from p2p.runtime.encoding import png_bytes
from p2p.runtime.modelfile import read_metadata

CPU = ["--provider", "cpu", "--precision", "fp32", "--quiet"]


def translate(*args):
    return CliRunner().invoke(main, [str(a) for a in args] + CPU)


def noise(path: Path, w=32, h=32, seed=0) -> Path:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return identity_model(tmp_path_factory.mktemp("m") / "id.onnx", image_size=32)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("P2P_CACHE", str(tmp_path_factory.getbasetemp() / "p2p-cache"))


def edited(p: Path, data: bytes | None = None) -> Path:
    """``data`` written to ``p`` (if given) as an edit: its mtime moves on, as a real edit's
    does (file ids are remembered per path, size and mtime within a process; two writes in
    one coarse clock tick would share an mtime)."""
    if data is not None:
        p.write_bytes(data)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + next(_EDITS) * 1_000_000))
    return p


_EDITS = itertools.count(1)  # each edit's mtime offset: distinct even within one tick


def expected(src: Path, model: Path, video: bool = False, **flags) -> provenance.Record:
    """The record a run of ``model`` with ``flags`` (TranslateConfig fields; the defaults
    otherwise) writes for ``src``."""
    from p2p.runtime.pipeline import Makers, TranslateConfig
    from p2p.runtime.plan import plan
    from p2p.runtime.tiles import check_tiling

    cfg = TranslateConfig(inputs=(src,), model=model, **{"fmt": "png", **flags})
    meta = read_metadata(model)
    overlap = check_tiling(meta, cfg.tile_overlap) if cfg.tile else None
    (job,), _ = plan(cfg, [])
    assert job.video == video
    return Makers(cfg, meta, model, overlap).maker(job).record((src,))


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tif"])
def test_every_image_format_carries_the_record(model, tmp_path, fmt):
    src = noise(tmp_path / "in" / "x.png")
    r = translate(src, "--model", model, "-o", tmp_path / "out", "--format", fmt)
    assert r.exit_code == 0, r.output
    out = tmp_path / "out" / f"x.{fmt}"
    assert provenance.read(out) == expected(src, model)
    with Image.open(out) as im:  # still a valid file of its kind, same pixels for lossless
        im.load()
        if fmt in ("png", "tif"):
            assert np.array_equal(np.asarray(im), np.asarray(Image.open(src)))


def test_tiled_and_float_outputs_carry_the_record(tmp_path):
    pytest.importorskip("tifffile")
    m = identity_model(tmp_path / "f.onnx", image_size=32, output_depth="float32",
                       output_range=(0.0, 1.0))
    src = noise(tmp_path / "in" / "big.png", 80, 48)
    assert translate(src, "--model", m, "-o", tmp_path / "o1").exit_code == 0
    assert provenance.read(tmp_path / "o1" / "big.tif") == expected(src, m)
    m8 = identity_model(tmp_path / "t.onnx", image_size=32)
    r = translate(src, "--model", m8, "-o", tmp_path / "o2", "--tile")
    assert r.exit_code == 0, r.output
    assert provenance.read(tmp_path / "o2" / "big.png") == expected(src, m8, tile=True)


def test_png_text_chunk_is_standard():
    a = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    data = png_bytes(a, "p2p-provenance/1 source=00ff model=abcd")
    import io

    with Image.open(io.BytesIO(data)) as im:
        assert im.text == {provenance.KEY: "p2p-provenance/1 source=00ff model=abcd"}
        assert np.array_equal(np.asarray(im), a)


def test_another_folders_output_of_the_same_name_is_refused_not_skipped(model, tmp_path):
    """a/x.jpg, then (another run) b/x.png into one --output: both are out/x.png. The second
    run used to say 'skipped 1' with a's result in place; now it is one line, nothing is
    written, and --overwrite replaces it."""
    a = noise(tmp_path / "a" / "x.jpg", seed=1)
    b = noise(tmp_path / "b" / "x.png", seed=2)
    out = tmp_path / "out"
    assert translate(a, "--model", model, "-o", out).exit_code == 0
    target = out / "x.png"
    os.utime(target, (1, 1))
    r = translate(b, "--model", model, "-o", out)
    assert r.exit_code != 0
    assert r.output.strip().splitlines()[-1] == (
        f"Error: {target}: made from another input than {b} (or from an earlier version of "
        "it): an existing output is skipped as done only when this input, model and settings "
        "made it; "
        "--overwrite replaces it, or give another --output")
    assert target.stat().st_mtime == 1 and sorted(os.listdir(out)) == ["x.png"]
    # the same input again: its own output, skipped as done (a resumed run)
    r = translate(a, "--model", model, "-o", out)
    assert r.exit_code == 0 and "translated 0, skipped 1, failed 0" in r.output
    r = translate(b, "--model", model, "-o", out, "--overwrite")
    assert r.exit_code == 0 and "translated 1, skipped 0, failed 0" in r.output
    assert provenance.read(target) == expected(b, model)


def test_an_edited_input_or_another_model_is_refused(model, tmp_path):
    src = tmp_path / "in"
    for i in range(3):
        noise(src / f"{i}.png", seed=i)
    out = tmp_path / "out"
    assert translate(src, "--model", model, "-o", out).exit_code == 0
    other = conv_model(tmp_path / "retrained.onnx", image_size=32, seed=3)
    r = translate(src, "--model", other, "-o", out)
    mine = provenance.model_id(read_metadata(model), model)
    theirs = provenance.model_id(read_metadata(other), other)
    assert r.exit_code != 0 and mine != theirs
    assert (f"Error: {out / '0.png'}: made by another model than this run's retrained.onnx "
            "(and 2 more): ") in r.output
    edited(noise(src / "1.png", seed=9))  # edited since
    r = translate(src, "--model", model, "-o", out)
    assert r.exit_code != 0 and f"Error: {out / '1.png'}: made from another input than " \
        f"{src / '1.png'}" in r.output


def test_an_output_without_a_record_is_skipped_as_before(model, tmp_path):
    """Outputs of p2p before the record (or put there by hand) keep counting as done: a run
    interrupted under an older version resumes."""
    src = noise(tmp_path / "in" / "0.png")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(src, out / "0.png")  # no record
    assert provenance.read(out / "0.png") is None
    r = translate(src, "--model", model, "-o", out)
    assert r.exit_code == 0 and "translated 0, skipped 1, failed 0" in r.output
    (out / "junk.png").write_bytes(b"not a png")
    assert provenance.read(out / "junk.png") is None


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_videos_carry_the_record_and_resume(tmp_path, suffix):
    pytest.importorskip("av")
    from video_clips import make_clip

    m = conv_model(tmp_path / "c.onnx", image_size=64)
    clip = make_clip(tmp_path / f"clip{suffix}", frames=6, size=64, audio=False,
                     **({"codec": "ffv1"} if suffix == ".mkv" else {}))
    out = tmp_path / "out"
    assert translate(clip, "--model", m, "-o", out).exit_code == 0
    assert provenance.read(out / clip.name) == expected(clip, m, video=True)
    r = translate(clip, "--model", m, "-o", out)
    assert r.exit_code == 0 and "translated 0, skipped 1" in r.output
    r = translate(clip, "--model", identity_model(tmp_path / "i.onnx", image_size=64), "-o", out)
    assert r.exit_code != 0 and "made by another model" in r.output
    # the encoder and CRF that auto and the default resolve to, given explicitly: the same
    r = translate(clip, "--model", m, "-o", out, "--video-codec", "libx264", "--crf", "18")
    assert r.exit_code == 0 and "skipped 1" in r.output, r.output
    r = translate(clip, "--model", m, "-o", out, "--crf", "30")
    assert r.exit_code != 0 and "(crf 18, this run 30)" in r.output
    # --split auto on a square clip takes the whole frame: the same as --split none
    r = translate(clip, "--model", m, "-o", out, "--split", "none")
    assert r.exit_code == 0 and "skipped 1" in r.output, r.output
    r = translate(clip, "--model", m, "-o", out, "--split", "left")
    assert r.exit_code != 0 and "(split none, this run left)" in r.output


def test_other_settings_or_another_export_of_the_checkpoint_are_refused(model, tmp_path):
    """--split right after --split left, --tile after whole images: other pixels, refused;
    a checkpoint exported with other pixel-changing metadata (norm mode) is another model,
    its FP16/INT8 files (another precision) are not."""
    from dataclasses import replace

    src = noise(tmp_path / "in" / "p.png", 64, 32)  # an A|B pair
    out = tmp_path / "out"
    assert translate(src, "--model", model, "-o", out, "--split", "left").exit_code == 0
    r = translate(src, "--model", model, "-o", out, "--split", "right")
    assert r.exit_code != 0 and f"Error: {out / 'p.png'}: made with other settings (split " \
        "left, this run right): " in r.output
    r = translate(src, "--model", model, "-o", out, "--split", "left", "--tile")
    assert r.exit_code != 0 and "made with other settings (tile none, this run 8)" in r.output
    assert translate(src, "--model", model, "-o", out, "--split", "left").exit_code == 0
    # auto picks the model's input half of a 2:1 pair (AtoB: left): the same settings
    r = translate(src, "--model", model, "-o", out)
    assert r.exit_code == 0 and "skipped 1" in r.output
    r = translate(src, "--model", model, "-o", out, "--split", "none")
    assert r.exit_code != 0 and "(split left, this run none)" in r.output

    meta = replace(read_metadata(model), checkpoint_sha256="ab" * 32)
    same = provenance.model_id(meta, model)
    assert provenance.model_id(replace(meta, precision="int8", input_dtype="float16",
                                       calibration_images=48), model) == same
    assert provenance.model_id(replace(meta, norm_mode="running"), model) != same
    assert provenance.model_id(replace(meta, dynamic_size=True), model) != same


def test_what_is_not_a_file_at_an_output_path_fails_that_input_only(model, tmp_path):
    """A folder or a FIFO where an output would go is never opened (a FIFO would block the
    run forever) nor counted as done: that input fails, the others are translated."""
    src = tmp_path / "in"
    for i in range(3):
        noise(src / f"{i}.png", seed=i)
    out = tmp_path / "out"
    (out / "0.png").mkdir(parents=True)
    os.mkfifo(out / "1.png")
    for extra in ([], ["--overwrite"]):
        r = translate(src, "--model", model, "-o", out, *extra)
        assert r.exit_code == 1, r.output
        assert "translated 1, skipped 0, failed 2" in r.output
        assert f"failed: {src / '0.png'}: cannot write {out / '0.png'}: a folder is in the way" \
            in r.output
        assert f"cannot write {out / '1.png'}: something not a file is in the way" in r.output
    r = process("grayscale", "--input", src, "--output", out, "--overwrite")
    assert r.exit_code == 1 and "1 written, 0 skipped" in r.output
    assert f"{src / '0.png'}: cannot write {out / '0.png'}: a folder is in the way" in r.output


def test_an_input_that_cannot_be_read_is_never_skipped_as_done(model, tmp_path):
    """A dangling link where an input was, with its output there: the input fails with the
    decoder's reason, exit 1; never "skipped", exit 0 (p2p-process the same)."""
    src = tmp_path / "in"
    noise(src / "0.png")
    out = tmp_path / "out"
    assert translate(src, "--model", model, "-o", out).exit_code == 0
    assert process("grayscale", "--input", src, "--output", tmp_path / "g").exit_code == 0
    (src / "0.png").unlink()
    (src / "0.png").symlink_to(tmp_path / "gone.png")
    r = translate(src, "--model", model, "-o", out)
    assert r.exit_code == 1 and "translated 0, skipped 0, failed 1" in r.output, r.output
    assert f"failed: {src / '0.png'}: " in r.output
    r = process("grayscale", "--input", src, "--output", tmp_path / "g")
    assert r.exit_code == 1 and "0 skipped" in r.output, r.output


def test_a_p2p_process_output_is_not_a_translation(model, tmp_path):
    src = noise(tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    assert process("grayscale", "--input", src.parent, "--output", out).exit_code == 0
    r = translate(src, "--model", model, "-o", out)
    assert r.exit_code != 0 and "made by p2p-process, not p2p-translate" in r.output


def test_an_edit_in_the_middle_of_a_large_input_is_seen(tmp_path):
    p = tmp_path / "big.tif"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8))
    edited(p, data)
    before = provenance.file_id(p)
    data[(3 << 20) // 2] ^= 1
    edited(p, data)
    assert provenance.file_id(p) != before


def test_file_id_sees_both_ends_of_a_large_file(tmp_path):
    p = tmp_path / "big.bin"
    data = bytearray(3 << 20)
    edited(p, data)
    first = provenance.file_id(p)
    data[-1] = 1
    edited(p, data)
    second = provenance.file_id(p)
    data[0] = 1
    edited(p, data)
    assert len({first, second, provenance.file_id(p)}) == 3
    edited(p, data + b"x")  # the size is part of it
    assert provenance.file_id(p) not in {first, second}


@pytest.mark.parametrize("tile", [False, True])
def test_geotiffs_carry_the_record_beside_their_georeference(model, tmp_path, tile):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    src = tmp_path / "scene.tif"
    a = np.random.default_rng(0).integers(0, 256, (3, 48, 80), dtype=np.uint8)
    with rasterio.open(src, "w", driver="GTiff", height=48, width=80, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 2, 2)) as d:
        d.write(a)
    r = translate(src, "--model", model, "-o", tmp_path / "out", "--format", "tif",
                  *(["--tile"] if tile else []))
    assert r.exit_code == 0, r.output
    out = tmp_path / "out" / "scene.tif"
    assert provenance.read(out) == expected(src, model, tile=tile)
    with rasterio.open(out) as d:
        assert d.crs.to_epsg() == 32633 and d.transform.a == 2


def process(*args):
    from p2p.cli.process import main as process_main

    return CliRunner().invoke(process_main, [str(a) for a in args] + ["--quiet"])


def test_p2p_process_skips_only_what_these_inputs_and_settings_made(tmp_path):
    """The same rule in p2p-process: a rerun resumes; other settings, another folder's
    same-named image, or other A/B inputs are refused in one line; split's byte copies are
    compared by content; --overwrite replaces."""
    a = noise(tmp_path / "a" / "x.png", 40, 30, seed=1)
    b = noise(tmp_path / "b" / "x.png", 40, 30, seed=2)
    out = tmp_path / "out"
    assert process("resize", "--input", a.parent, "--output", out, "--size", "16").exit_code == 0
    assert provenance.read(out / "x.png") is not None
    r = process("resize", "--input", a.parent, "--output", out, "--size", "16")
    assert r.exit_code == 0 and "0 written, 1 skipped" in r.output
    r = process("resize", "--input", a.parent, "--output", out, "--size", "24")
    assert r.exit_code == 1 and f"Error: {out / 'x.png'}: made with other settings (size 16, " \
        "this run 24): " in r.output
    r = process("grayscale", "--input", a.parent, "--output", out)
    assert r.exit_code == 1 and "made by another operation than this run's grayscale" in r.output
    r = process("resize", "--input", b.parent, "--output", out, "--size", "16")
    assert r.exit_code == 1 and \
        f"Error: {out / 'x.png'}: made from another input than {b} " in r.output
    assert np.asarray(Image.open(out / "x.png")).shape == (16, 16, 3)  # untouched
    r = process("resize", "--input", b.parent, "--output", out, "--size", "24", "--overwrite")
    assert r.exit_code == 0 and np.asarray(Image.open(out / "x.png")).shape == (24, 24, 3)

    pairs = tmp_path / "pairs"
    assert process("combine", "--a", a.parent, "--b", b.parent, "--output", pairs).exit_code == 0
    r = process("combine", "--a", b.parent, "--b", a.parent, "--output", pairs)
    assert r.exit_code == 1 and f"made from other inputs than {b} and {a} " in r.output

    split = tmp_path / "split"
    assert process("split", "--input", a.parent, "--output", split).exit_code == 0
    assert process("split", "--input", a.parent, "--output", split).exit_code == 0
    r = process("split", "--input", b.parent, "--output", split)
    assert r.exit_code == 1 and f"is not a copy of {b} " in r.output

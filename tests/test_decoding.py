"""Issue 14 fault 4, by kind: one decoder for every command. A photo whose EXIF Pillow
cannot write back (Orientation 6 plus a tag stored with the wrong type) is decoded upright,
and whatever exception a decoder raises on a bad file becomes one line naming the file, in
p2p-translate, p2p-process, p2p-train, p2p-eval and p2p-serve."""

from __future__ import annotations

import io
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from onnx_models import identity_model
from p2p.runtime import images
from p2p.runtime.errors import ImageError


def exif_photo(path=None) -> bytes:
    """A 300x200 JPEG, red left half, with EXIF Orientation 6 (rotate 90 degrees clockwise
    to view) and WhitePoint (a RATIONAL tag) stored as ASCII, written byte by byte since
    Pillow itself refuses to serialise it."""
    ifd = (struct.pack("<H", 2) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
           + struct.pack("<HHI", 0x013E, 2, 4) + b"abc\0" + struct.pack("<I", 0))
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd
    a = np.zeros((200, 300, 3), np.uint8)
    a[:, :150, 0] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", exif=exif, quality=95)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_the_photo_is_one_pillow_cannot_transpose():
    """The input really is the hard case: Pillow's exif_transpose fails on it."""
    with Image.open(io.BytesIO(exif_photo())) as im:
        assert im.getexif()[0x0112] == 6
        with pytest.raises(TypeError):
            ImageOps.exif_transpose(im)


def test_decoded_upright_without_rewriting_the_exif():
    im = images.open_rgb(io.BytesIO(exif_photo()))
    assert im.size == (200, 300)
    a = np.asarray(im)
    # Rotated 90 degrees clockwise, the red left half of the stored pixels is now on top.
    assert a[:140, :, 0].mean() > 240 and a[160:, :, 0].mean() < 15


def test_mangled_exif_never_raises_anything_but_image_error():
    data = bytearray(exif_photo())
    start = data.index(b"Exif")
    rng = np.random.default_rng(0)
    for _ in range(60):
        mutated = bytearray(data)
        for i in rng.integers(start, start + 60, 4):
            mutated[i] = int(rng.integers(0, 256))
        try:
            im = images.open_rgb(io.BytesIO(bytes(mutated)))
        except ImageError as e:
            assert "\n" not in str(e)
        else:
            assert sorted(im.size) == [200, 300]


def test_every_command_decodes_it_upright(tmp_path):
    from p2p.cli.eval import main as eval_main
    from p2p.cli.process import main as process
    from p2p.cli.translate import main as translate
    from p2p.runtime.server import decode
    from p2p.trainer.data import build_datasets

    src = tmp_path / "in"
    exif_photo(src / "photo.jpg")
    model = identity_model(tmp_path / "m.onnx", dynamic_size=True)
    r = CliRunner(env={"P2P_CACHE": str(tmp_path / "c")}).invoke(
        translate, [str(src), "--model", str(model), "-o", str(tmp_path / "t"), "-q"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "t" / "photo.png").size == (200, 300)
    r = CliRunner().invoke(process, ["grayscale", "--input", str(src), "--output",
                                     str(tmp_path / "g"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "g" / "photo.png").size == (200, 300)
    r = CliRunner().invoke(eval_main, [str(tmp_path / "t"), str(src), "--quiet"])
    assert r.exit_code == 0 and "1 images" in r.output, r.output
    train, _ = build_datasets(src, None, None, True, "AtoB", 32, 36, False, 0)
    L, ab = train[0]
    assert tuple(L.shape) == (1, 32, 32) and tuple(ab.shape) == (2, 32, 32)
    assert train._load(0)[0].shape[1::-1] == (200, 300)  # (H, W, C) arrays
    engine_meta = __import__("p2p.runtime.engine", fromlist=["Engine"]).Engine(
        model, "cpu", cache_dir=tmp_path / "c").metadata
    assert decode(exif_photo(), engine_meta, "auto").size == (200, 300)


def test_any_decoder_exception_is_one_line_naming_the_file_in_every_command(
        tmp_path, monkeypatch):
    """A decoder plug-in raising something unexpected, with an empty message (struct.error())
    on one file: every command names that file in one line, no traceback."""
    from p2p.cli.eval import main as eval_main
    from p2p.cli.process import main as process
    from p2p.cli.train import main as train
    from p2p.cli.translate import main as translate
    from p2p.runtime.engine import Engine
    from p2p.runtime.server import decode

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "bad.png"):
        Image.new("RGB", (64, 32), (9, 9, 9)).save(src / name)
    real = images.upright

    def flaky(im):
        if str(getattr(im, "filename", "")).endswith("bad.png") or not getattr(im, "filename",
                                                                                 "x"):
            raise struct.error()
        return real(im)

    monkeypatch.setattr(images, "upright", flaky)
    bad = str(src / "bad.png")
    model = identity_model(tmp_path / "m.onnx", dynamic_size=True)
    r = CliRunner(env={"P2P_CACHE": str(tmp_path / "c")}).invoke(
        translate, [str(src), "--model", str(model), "-o", str(tmp_path / "t"), "-q"])
    assert r.exit_code == 1 and "translated 1, skipped 0, failed 1" in r.output
    assert f"failed: {bad}: cannot decode: error" in r.output
    r = CliRunner().invoke(process, ["blank", "--input", str(src), "--output",
                                     str(tmp_path / "b"), "--quiet"])
    assert r.exit_code == 1 and f"failed: {bad}: cannot decode: error" in r.output, r.output
    r = CliRunner().invoke(train, ["--data", str(src), "--output", str(tmp_path / "run"),
                                   "--quiet", "--image-size", "32"])
    assert r.exit_code == 1, r.output
    assert f"Error: {bad}: unreadable image: cannot decode: error\n" in r.output
    assert "Traceback" not in r.output
    shutil.copytree(src, tmp_path / "targets")  # the same folder twice is refused up front
    r = CliRunner().invoke(eval_main, [str(src), str(tmp_path / "targets"), "--quiet"])
    lines = [ln.strip() for ln in r.output.strip().splitlines()]
    assert r.exit_code == 1 and lines[0].startswith("Error: 2 of ") and "Traceback" not in r.output
    assert lines[1:] == [f"{bad}: cannot decode: error",
                         f"{tmp_path / 'targets' / 'bad.png'}: cannot decode: error"]
    meta = Engine(model, "cpu", cache_dir=tmp_path / "c").metadata
    with pytest.raises(ImageError, match=r"request body: cannot decode: error$"):
        decode((src / "bad.png").read_bytes(), meta, "auto")

"""Limits on what an input may cost: decompression bombs (the limit stays on in every
command and is configurable with P2P_MAX_IMAGE_PIXELS), and model metadata that lies about
the image size (each image would be resized to it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from PIL import Image, ImageFile

from badfiles import bomb_png, noise
from onnx_models import identity_model
from p2p.runtime import images
from p2p.runtime.engine import Engine
from p2p.runtime.errors import ImageError, ModelError
from test_untrusted import TINY, _isolated, invoke  # noqa: F401  (the autouse fixture too)

BIN = Path(sys.executable).parent


# --- decompression bombs: the limit stays on, and is configurable ------------------------------

def test_no_p2p_module_switches_pillows_guards_off():
    import p2p.cli.process  # noqa: F401
    import p2p.cli.train  # noqa: F401
    import p2p.cli.translate  # noqa: F401
    import p2p.export.onnx  # noqa: F401
    import p2p.runtime.evaluate  # noqa: F401
    import p2p.runtime.pipeline  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS >= 89_478_485
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert images.max_pixels() == 89_478_485  # Pillow's default, unless configured


def test_bomb_refused_by_default(tmp_path):
    """The 110 kB file that decodes to 30000x30000 (2.7 GB of RGB) is refused by name."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.png").write_bytes(bomb_png())
    Image.fromarray(noise(16, 16)).save(tmp_path / "in" / "ok.png")
    model = identity_model(tmp_path / "m.onnx", dynamic_size=True, size_multiple=8)
    env = {**os.environ, "P2P_CACHE": str(tmp_path / "cache")}
    env.pop("P2P_MAX_IMAGE_PIXELS", None)
    r = subprocess.run([str(BIN / "p2p-translate"), str(tmp_path / "in"), "--model", str(model),
                        "-o", str(tmp_path / "out"), "-q"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "translated 1, skipped 0, failed 1" in r.stdout
    assert (f"failed: {tmp_path / 'in' / 'bomb.png'}: 900000000 pixels is over the "
            "decompression-bomb limit 89478485 (raise P2P_MAX_IMAGE_PIXELS") in r.stdout


@pytest.mark.parametrize("command", ["translate", "process", "train"])
def test_a_lower_limit_applies_to_every_command(tmp_path, monkeypatch, command):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(noise(64, 32)).save(src / "big.png")  # 2048 pixels
    Image.fromarray(noise(32, 16, 1)).save(src / "small.png")  # 512 pixels
    monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", "1000")
    why = f"{src / 'big.png'}: 64x32 = 2048 pixels is over the decompression-bomb limit 1000"
    if command == "translate":
        from p2p.cli.translate import main

        model = identity_model(tmp_path / "m.onnx", dynamic_size=True, size_multiple=8)
        r = invoke(main, src, "--model", model, "-o", tmp_path / "out", "-q", "--split", "none")
        assert r.exit_code == 1 and "translated 1, skipped 0, failed 1" in r.output
        assert f"failed: {why}" in r.output
    elif command == "process":
        from p2p.cli.process import main

        r = invoke(main, "grayscale", "--input", src, "--output", tmp_path / "out", "--quiet")
        assert r.exit_code == 1 and "1 written" in r.output
        assert f"failed: {src / 'big.png'}: {why.split(': ', 1)[1]}" in r.output
    else:
        from p2p.cli.train import main

        r = invoke(main, "--data", src, *TINY, "--max-steps", 1, "-o", tmp_path / "run")
        assert r.exit_code == 1 and f"Error: {src / 'big.png'}: unreadable image: " \
            f"{why.split(': ', 1)[1]}" in r.output
        monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", "4096")  # raised: now it trains
        r = invoke(main, "--data", src, *TINY, "--max-steps", 1, "-o", tmp_path / "run")
        assert r.exit_code == 0, r.output


def test_a_higher_limit_lifts_pillows_own_check(tmp_path, monkeypatch):
    """Above twice its limit Pillow refuses by itself; a raised P2P_MAX_IMAGE_PIXELS must lift
    that too. Simulated with a small default limit (a real one needs a 180-megapixel image)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    monkeypatch.setattr(images, "_DEFAULT_MAX_PIXELS", 500)
    Image.fromarray(noise(40, 40)).save(tmp_path / "big.png")  # 1600 > 2 x 500
    with pytest.raises(ImageError, match=r"big\.png: 1600 pixels is over the decompression-bomb "
                                         r"limit 500 \(raise P2P_MAX_IMAGE_PIXELS"):
        images.open_rgb(tmp_path / "big.png")
    monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", "2000")
    assert images.open_rgb(tmp_path / "big.png").size == (40, 40)
    monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", "1599")
    with pytest.raises(ImageError, match="40x40 = 1600 pixels is over the decompression-bomb "
                                         "limit 1599"):
        images.open_rgb(tmp_path / "big.png")


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_a_bad_limit_is_one_error_before_any_work(tmp_path, monkeypatch, value):
    from p2p.cli.translate import main

    model = identity_model(tmp_path / "m.onnx", dynamic_size=True, size_multiple=8)
    Image.fromarray(noise(16, 16)).save(tmp_path / "a.png")
    monkeypatch.setenv("P2P_MAX_IMAGE_PIXELS", value)
    r = invoke(main, tmp_path / "a.png", "--model", model, "-o", tmp_path / "out", "-q")
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (f"Error: P2P_MAX_IMAGE_PIXELS={value!r} is not "
                                                 "a positive integer")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("provider", ["cpu", "openvino", "auto"])
def test_metadata_that_lies_about_the_size_is_refused(tmp_path, monkeypatch, provider):
    """Images are resized to the metadata's image_size before the graph sees them: a file
    claiming 65536 would make each one 50 GB. The graph's own input shape must agree, on
    every backend: the check runs before any backend is created (none is, here)."""
    if provider == "openvino":
        pytest.importorskip("openvino", reason="p2p[openvino] not installed")
    from p2p.runtime import backends

    created = []
    monkeypatch.setattr(backends, "create", lambda *a: created.append(a))
    path = identity_model(tmp_path / "m.onnx", image_size=32)
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "p2p.image_size":
            p.value = "65536"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"m\.onnx: graph input is 32x32 but its metadata says "
                                         r"image_size 65536"):
        Engine(path, provider)
    assert created == []

"""Issue 14 fault 3, by kind: which images are cut into A|B halves, in p2p-translate and
p2p-serve alike. A colorization (Lab) model never splits; an RGB model's automatic split of
an exactly 2:1 image is said once per run."""

from __future__ import annotations

import io
import logging

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnx_models import constant_model, identity_model
from p2p.cli.translate import main
from p2p.runtime.engine import Engine
from serve_helpers import live_server

NOTE = "treating 600x300 images as A|B pairs: using the left half; --split none"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("split-models")
    return {"rgb": identity_model(d / "rgb.onnx", dynamic_size=True),
            "lab": constant_model(d / "lab.onnx", bias=[0.5, -0.5], in_channels=1,
                                  out_channels=2, color_space="lab", dynamic_size=True)}


def photos(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def run(*args, cache):
    return CliRunner(env={"P2P_CACHE": str(cache)}).invoke(main, [*map(str, args), "-q"])


def sizes(folder):
    return sorted(Image.open(p).size for p in folder.glob("*.png"))


def test_lab_model_never_splits_a_2_to_1_photo(models, tmp_path):
    src = photos(tmp_path / "in", [(512, 256), (64, 32)])
    r = run(src, "--model", models["lab"], "-o", tmp_path / "out", cache=tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert sizes(tmp_path / "out") == [(64, 32), (512, 256)]
    assert "A|B pairs" not in r.output


def test_rgb_auto_split_is_said_once_per_run(models, tmp_path):
    src = photos(tmp_path / "in", [(600, 300), (600, 300), (600, 300), (50, 40)])
    r = run(src, "--model", models["rgb"], "-o", tmp_path / "out", cache=tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert r.output.count("A|B pairs") == 1 and NOTE in r.output
    assert sizes(tmp_path / "out") == [(50, 40)] + [(300, 300)] * 3
    r = run(src, "--model", models["rgb"], "-o", tmp_path / "whole", "--split", "none",
            cache=tmp_path / "c")
    assert r.exit_code == 0 and "A|B pairs" not in r.output
    assert sizes(tmp_path / "whole") == [(50, 40)] + [(600, 300)] * 3


def test_serve_follows_the_same_rule(models, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="p2p.serve")
    body = io.BytesIO()
    Image.fromarray(np.zeros((300, 600, 3), np.uint8)).save(body, "PNG")
    for name, half, size in (("lab", "whole", (600, 300)), ("rgb", "left", (300, 300))):
        engine = Engine(models[name], "cpu", batch_size=4, threads=1, cache_dir=tmp_path / "c")
        with live_server(engine) as (url, _):
            for _ in range(2):
                r = httpx.post(url + "/translate", content=body.getvalue(), timeout=30)
                assert r.status_code == 200, r.text
                assert r.headers["x-p2p-half"] == half
                assert Image.open(io.BytesIO(r.content)).size == size
        engine.close()
    said = [rec.getMessage() for rec in caplog.records if "A|B pairs" in rec.getMessage()]
    assert said == ["treating 600x300 images as A|B pairs: using the left half; ?split=none "
                    "to keep the whole image"]

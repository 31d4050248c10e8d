"""The processing rules of a --web site (model.json "rules") hold p2p.runtime.images and the
page together: numpy that follows only the rules equals ``images.prepare``/``to_image``, and
the page (pixels.js in chromium) equals ``p2p-translate`` for every kind of model: RGB at a
fixed size (split + resize both ways), greyscale, dynamic size (padding), and Lab."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnx_models import conv_model
from p2p.cli.translate import main as translate_cli
from p2p.export.web import WebConfig, write_site
from p2p.runtime import images
from p2p.runtime.modelfile import read_metadata
from p2p.runtime.processing import rules as make_rules

from web_helpers import browser, open_page, png, read_rgb, real_tarball, seed_cache, served, \
    translate_in_page

KINDS = {  # name -> conv_model metadata, the input image's (height, width)
    "rgb-fixed": (dict(direction="BtoA"), (40, 80)),  # a 2:1 pair, right half, 40 -> 32 -> 40
    "grey": (dict(in_channels=1, out_channels=1, image_size=32), (45, 37)),
    "dynamic": (dict(dynamic_size=True, size_multiple=8), (37, 50)),  # padded to 40x56
    "lab": (dict(color_space="lab", in_channels=1, out_channels=2), (45, 70)),
}


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some texture (bicubic resampling has work to do)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 7 + c) * np.cos(y / 5 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rules")
    return {k: conv_model(root / f"{k}.onnx", seed=5, verified=True, **meta)
            for k, (meta, _) in KINDS.items()}


def by_rules(rgb: np.ndarray, r: dict) -> np.ndarray:
    """The model input, (C, H, W) float32, from the rules alone (Pillow for the resize)."""
    h, w = rgb.shape[:2]
    s = r["split"]
    if not s["never"] and w == s["aspect"] * h:
        rgb = rgb[:, : w // 2] if s["input_half"] == "left" else rgb[:, w - w // 2:]
    img = Image.fromarray(rgb)
    if r["resize"]["size"]:
        img = img.resize(tuple(r["resize"]["size"]), Image.BICUBIC)
    a = np.asarray(img).astype(np.int64)
    inp = r["input"]
    if inp["color_space"] == "lab":
        lab = r["lab"]
        c = (a / 255.0).astype(np.float32).astype(np.float64)
        lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
        t = lin @ np.array(lab["rgb_to_xyz"]).T / np.array(lab["white"])
        f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
        x = ((116 * f[..., 1] - 16) / lab["L_scale"] - 1)[None].astype(np.float32)
    else:
        if inp["channels"] == 1:
            k = inp["grey_fixed16"]
            a = ((a[..., 0] * k[0] + a[..., 1] * k[1] + a[..., 2] * k[2] + 0x8000) >> 16)[..., None]
        x = (a.transpose(2, 0, 1).astype(np.float32) / np.float32(inp["divisor"])
             + np.float32(inp["offset"]))
    m = r["pad"]["multiple"]
    ph, pw = -x.shape[1] % m, -x.shape[2] % m
    mode = "reflect" if ph < x.shape[1] and pw < x.shape[2] else "edge"
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)


@pytest.mark.parametrize("kind", KINDS)
def test_rules_reproduce_the_python_runtime(models, kind, tmp_path):
    meta = read_metadata(models[kind])
    r = make_rules(meta)
    rgb = photo(*KINDS[kind][1])
    path = png(rgb, tmp_path / "in.png")
    prep = images.prepare(path, meta)
    np.testing.assert_array_equal(by_rules(rgb, r), prep.array)
    # the way back: value mapping with round-half-even, clipped
    y = np.random.default_rng(1).uniform(-1.2, 1.2, (meta.out_channels,) + prep.array.shape[1:])
    y = y.astype(np.float32)
    if meta.color_space == "rgb":
        out = r["output"]
        w, h = prep.size
        v = np.rint((y[:, :h, :w] - np.float32(out["offset"])) * np.float32(out["scale"]))
        u8 = np.clip(v, 0, 255).astype(np.uint8)
        img = Image.fromarray(u8[0] if len(u8) == 1 else u8.transpose(1, 2, 0))
        img = img if img.size == prep.size else img.resize(prep.size, Image.BICUBIC)
        np.testing.assert_array_equal(np.asarray(img), np.asarray(images.to_image(y, prep, meta)))


@pytest.mark.slow
def test_page_equals_p2p_translate_for_every_kind(models, tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    seed_cache(tmp_path / "cache", real_tarball())
    with browser(tmp_path) as context:
        for kind, model in models.items():
            site = tmp_path / f"site-{kind}"
            write_site([model], WebConfig(site, webgpu=False, progress=False), lambda s: None)
            image = png(photo(*KINDS[kind][1], seed=2), tmp_path / f"{kind}.png")
            r = CliRunner().invoke(translate_cli, [str(image), "--model", str(model), "-o",
                                                   str(tmp_path / kind), "--provider", "cpu",
                                                   "--precision", "fp32"])
            assert r.exit_code == 0, r.output
            expected = read_rgb(tmp_path / kind / f"{kind}.png")
            with served(site) as url:
                page = open_page(context, url)
                got = translate_in_page(page, image)
                assert not page.p2p_errors, page.p2p_errors
                page.close()
            assert got.shape == expected.shape, kind
            diff = np.abs(got.astype(int) - expected.astype(int))
            assert (diff <= 1).mean() >= 0.999, (kind, (diff <= 1).mean(), diff.max())


@pytest.mark.slow
def test_page_resize_is_pillows(models, tmp_path, monkeypatch):
    """pixels.js's bicubic against Pillow's, both pass orders, shrinking and growing, uint8
    and float (mode F, the ab planes of Lab models)."""
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    seed_cache(tmp_path / "cache", real_tarball())
    site = tmp_path / "site"
    write_site([models["rgb-fixed"]], WebConfig(site, webgpu=False, progress=False),
               lambda s: None)
    rng = np.random.default_rng(7)
    vfirst = make_rules(read_metadata(models["rgb-fixed"]))["resize"]["vertical_first"]
    cases = [(37, 45, 32, 32), (45, 37, 32, 32), (256, 256, 64, 64), (32, 32, 45, 37)]
    cases += [tuple(int(v) for v in rng.integers(5, 90, 4)) for _ in range(16)]
    with served(site) as url, browser(tmp_path) as context:
        page = open_page(context, url)
        for w, h, ow, oh in cases:
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            f = rng.uniform(-1, 1, (h, w)).astype(np.float32)
            got8, gotf = page.evaluate("""async ([a, f, w, h, ow, oh, vf]) => {
                const { resize } = await import("./pixels.js");
                return [Array.from(resize(Uint8ClampedArray.from(a), w, h, 3, ow, oh, true, vf)),
                        Array.from(resize(Float32Array.from(f), w, h, 1, ow, oh, false, vf))];
            }""", [a.ravel().tolist(), f.ravel().tolist(), w, h, ow, oh, vfirst])
            want8 = np.asarray(Image.fromarray(a).resize((ow, oh), Image.BICUBIC))
            wantf = np.asarray(Image.fromarray(f).resize((ow, oh), Image.BICUBIC))
            np.testing.assert_array_equal(np.array(got8, np.uint8).reshape(oh, ow, 3), want8,
                                          err_msg=str((w, h, ow, oh)))
            np.testing.assert_allclose(np.array(gotf, np.float32).reshape(oh, ow), wantf,
                                       atol=1e-6, err_msg=str((w, h, ow, oh)))


@pytest.mark.slow
def test_page_refuses_a_nan_output(tmp_path, monkeypatch):
    """No wrong picture: a model that outputs NaN fails the translation with that reason."""
    from onnx_models import constant_model

    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    seed_cache(tmp_path / "cache", real_tarball())
    model = constant_model(tmp_path / "nan.onnx", [float("nan"), 0.0, 0.0], verified=True)
    write_site([model], WebConfig(tmp_path / "site", webgpu=False, progress=False),
               lambda s: None)
    with served(tmp_path / "site") as url, browser(tmp_path) as context:
        page = open_page(context, url)
        error = page.evaluate("""() => window.p2p.translate(new ImageData(32, 32))
            .then(() => "no error", (e) => e.message)""")
    assert error == "the model's output holds NaN or Inf"

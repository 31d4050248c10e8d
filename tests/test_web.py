"""p2p-export --web: the static page that runs the generator in the browser.

A tiny U-Net (ngf 8, 64 px) exported in FP32, FP16 and INT8 with --web; the pages are
served on 127.0.0.1 (with and without cross-origin isolation) and driven in headless Debian
chromium: the worker, window.p2p, drawing, upload, and the output against p2p-translate on
the same file. The runtime download is checked against a fake registry on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from p2p.cli.export import main as export_cli
from p2p.cli.serve import main as serve_cli
from p2p.cli.translate import main as translate_cli
from p2p.export import web
from p2p.runtime import webruntime
from p2p.runtime.errors import HashMismatch, ModelError
from p2p.runtime.metrics import psnr
from p2p.runtime.modelfile import read_metadata
from p2p.runtime.processing import page_metadata

from web_helpers import (browser, open_page, png, read_rgb, real_tarball, seed_cache, served,
                         shown_output, translate_in_page)

pytest.importorskip("nncf", reason="the INT8 page needs nncf (pip install 'p2p[int8]')")
from test_int8 import _save, make_checkpoint  # noqa: E402
from test_export import images  # noqa: E402

SITE_FILES = {"index.html", "app.css", "draw.js", "web.js", "worker.js", "pixels.js",
              "model.onnx", "model.json", "_headers", "ort"}


def cli(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private P2P_CACHE for the module holding the real, verified runtime tarball."""
    tarball = real_tarball()  # the user's cache: fetched from the registry at most once
    root = tmp_path_factory.mktemp("cache")
    seed_cache(root, tarball)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("P2P_CACHE", str(root))
        mp.delenv("P2P_NPM_REGISTRY", raising=False)
        yield root


@pytest.fixture(scope="module")
def run(cache, tmp_path_factory, facades):
    root = tmp_path_factory.mktemp("web")
    make_checkpoint(root / "run" / "checkpoints" / "latest.pt")
    calib = _save(root / "calibration", images(12, seed=3))
    result = cli(export_cli, [root / "run", "--fp16", "--int8", "--calibration", calib,
                              "--web", root / "site"])
    assert result.exit_code == 0, result.output
    export = root / "run" / "export"
    sites = {"default": root / "site"}
    for precision, name in (("fp32", "generator.onnx"), ("fp16", "generator.fp16.onnx"),
                            ("int8", "generator.int8.onnx")):
        r = cli(export_cli, [export / name, "--web", root / f"site-{precision}", "-q"])
        assert r.exit_code == 0, r.output
        sites[precision] = root / f"site-{precision}"
    # A real facade label map as PNG (decoded the same in every browser): a 512x256 A|B
    # pair, so the page splits, resizes down to 64 and back up, as p2p-translate does.
    pair = png(read_rgb(sorted((facades / "val").glob("*.jpg"))[0]), root / "pair.png")
    return {"root": root, "export": export, "sites": sites, "log": result.output,
            "pair": pair}


def p2p_translate(model: Path, image: Path, out: Path) -> np.ndarray:
    r = cli(translate_cli, [image, "--model", model, "--output", out, "--provider", "cpu",
                            "--precision", "fp32" if "int8" not in model.name else "int8"])
    assert r.exit_code == 0, r.output
    return read_rgb(out / (image.stem + ".png"))


# --- the site on disk ------------------------------------------------------------------------

def test_site_files_metadata_and_headers(run):
    site, export = run["sites"]["default"], run["export"]
    assert {p.name for p in site.iterdir()} == SITE_FILES
    assert {p.name for p in (site / "ort").iterdir()} == set(webruntime.WASM_FILES
                                                             + webruntime.WEBGPU_FILES)
    # default: the smallest verified export, said with its size
    sizes = {p: p.stat().st_size for p in export.glob("*.onnx")}
    smallest = min(sizes, key=sizes.get)
    assert (site / "model.onnx").read_bytes() == smallest.read_bytes()
    precision = read_metadata(smallest).model_precision
    assert f"model.onnx {precision.upper()} {sizes[smallest] / 1e6:.1f} MB" in run["log"]
    doc = json.loads((site / "model.json").read_text())
    assert doc == {**page_metadata(read_metadata(smallest), "model.onnx", sizes[smallest]),
                   "ort": doc["ort"], "webgpu": True, "page": {"palette": "facades"}}
    assert doc["ort"] == {"package": "onnxruntime-web", "version": webruntime.VERSION,
                          "integrity": webruntime.INTEGRITY}
    assert doc["metadata"]["direction"] == "BtoA" and doc["rules"]["split"]["input_half"] == "right"
    headers = (site / "_headers").read_text()
    assert "/*\n  Cross-Origin-Opener-Policy: same-origin\n" \
           "  Cross-Origin-Embedder-Policy: require-corp\n" in headers
    html = (site / "index.html").read_text()
    assert "/static/" not in html and 'type="module" src="web.js"' in html
    for p in ("fp32", "fp16", "int8"):
        meta = read_metadata(run["sites"][p] / "model.onnx")
        assert meta.model_precision == p and meta.verified


def test_precision_choice_and_refusals(run, tmp_path):
    export = run["export"]
    models = [export / "generator.onnx", export / "generator.fp16.onnx"]
    assert web.choose(models, "fp16") == export / "generator.fp16.onnx"
    with pytest.raises(ModelError, match=r"no verified INT8 export \(export it with --int8\)"):
        web.choose(models, "int8")
    said = []
    old = web.PAGE_MODEL_MB
    web.PAGE_MODEL_MB = 0.1  # this tiny FP32 file stands in for a 218 MB generator
    try:
        web.write_site([export / "generator.onnx"], web.WebConfig(tmp_path / "s", progress=False,
                                                                  webgpu=False), said.append)
    finally:
        web.PAGE_MODEL_MB = old
    assert any(s.startswith("warning: model.onnx is") and "--web-precision int8" in s
               for s in said), said
    assert not (tmp_path / "s" / "ort" / "ort.webgpu.min.mjs").exists()
    doc = json.loads((tmp_path / "s" / "model.json").read_text())
    assert doc["webgpu"] is False and doc["page"] == {"palette": "facades"}
    # an edges2* model draws black on white (p2p-pretrained keeps each model in its name)
    edges = tmp_path / "edges2shoes" / "generator.onnx"
    edges.parent.mkdir()
    edges.write_bytes((export / "generator.onnx").read_bytes())
    web.write_site([edges], web.WebConfig(tmp_path / "e", progress=False, webgpu=False),
                   said.append)
    assert json.loads((tmp_path / "e" / "model.json").read_text())["page"] == {"palette": "sketch"}


# --- the runtime download --------------------------------------------------------------------

class _Registry(http.server.BaseHTTPRequestHandler):
    body = b""
    paths: list = []

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_integrity_mismatch_is_refused(run, tmp_path, monkeypatch):
    """A registry on 127.0.0.1 that serves other bytes: refused, nothing kept, no site."""
    handler = type("R", (_Registry,), {"body": b"not the onnxruntime-web tarball" * 1000,
                                       "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("P2P_NPM_REGISTRY", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
        with pytest.raises(HashMismatch, match="does not match the pinned onnxruntime-web"):
            webruntime.ensure_tarball()
        r = cli(export_cli, [run["export"] / "generator.onnx", "--web", tmp_path / "site"])
    finally:
        server.shutdown()
        server.server_close()
    assert handler.paths[0] == f"/onnxruntime-web/-/onnxruntime-web-{webruntime.VERSION}.tgz"
    errors = [line for line in r.output.splitlines() if "Error" in line]
    assert r.exit_code == 1 and len(errors) == 1 and errors[0].startswith("Error: http://127")
    assert "integrity" in errors[0] and "does not match the pinned" in errors[0]
    assert not (tmp_path / "site").exists()
    assert not list((tmp_path / "cache" / "web").iterdir())  # neither the file nor a .part
    # a tarball placed in the cache by hand is checked the same way, and deleted
    cached = webruntime.cached_tarball()
    cached.write_bytes(b"tampered")
    with pytest.raises(HashMismatch):
        webruntime.ensure_tarball()
    assert not cached.exists()


def test_no_network_no_cache_is_one_line(run, tmp_path, monkeypatch, closed_port):
    monkeypatch.setenv("P2P_NPM_REGISTRY", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    r = cli(export_cli, [run["export"] / "generator.onnx", "--web", tmp_path / "site"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output  # no bar
    line = r.output.strip()
    dest = webruntime.cached_tarball()
    assert line.startswith("Error: onnxruntime-web 1.31.1 is not in the cache")
    assert (f"fetch https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-"
            f"{webruntime.VERSION}.tgz" in line and f"place it at {dest}" in line)
    assert webruntime.INTEGRITY in line and not (tmp_path / "site").exists()


@pytest.mark.slow
def test_pretrained_get_web(tmp_path, monkeypatch, cache):
    """p2p-pretrained get NAME --web DIR --web-precision fp16: exported for the page."""
    from p2p.cli.pretrained import main as pretrained_cli
    from test_pretrained import NAME, Server, reference_bytes

    server = Server()
    server.files[f"{NAME}.pth"] = reference_bytes(tmp_path, 1)
    monkeypatch.setenv("P2P_MODELS_URL", server.url)
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    seed_cache(tmp_path / "cache", webruntime.cached_tarball(cache))
    try:
        r = cli(pretrained_cli, ["get", NAME, "--web", tmp_path / "site", "--web-precision",
                                 "fp16", "--web-no-webgpu", "--quiet"])
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    fp16 = tmp_path / "cache" / "models" / NAME / "generator.fp16.onnx"
    assert (tmp_path / "site" / "model.onnx").read_bytes() == fp16.read_bytes()
    assert f"model.onnx FP16" in r.output and "(WASM only)" in r.output
    meta = json.loads((tmp_path / "site" / "model.json").read_text())["metadata"]
    assert meta["source"] == "junyanz" and meta["input_dtype"] == "float16"
    assert not (tmp_path / "site" / "ort" / "ort.webgpu.min.mjs").exists()


# --- p2p-serve --web ---------------------------------------------------------------------------

def test_serve_web_headers_and_usage(run, tmp_path):
    for isolation in (True, False):
        with served(run["sites"]["fp32"], isolation) as url:
            with urllib.request.urlopen(url) as r:
                assert (r.headers.get("Cross-Origin-Embedder-Policy") == "require-corp") is isolation
                assert (r.headers.get("Cross-Origin-Opener-Policy") == "same-origin") is isolation
            with urllib.request.urlopen(url + "ort/ort-wasm-simd-threaded.wasm") as r:
                assert r.headers["Content-Type"] == "application/wasm"
            with urllib.request.urlopen(url + "ort/ort.wasm.min.mjs") as r:
                assert r.headers["Content-Type"] == "text/javascript"
    r = cli(serve_cli, ["--web", run["sites"]["fp32"], "--model", run["export"] / "generator.onnx"])
    assert r.exit_code == 2 and "drop --model" in r.output
    r = cli(serve_cli, ["--web", tmp_path])
    assert r.exit_code == 1 and "not a p2p web site" in r.output


# --- in the browser ----------------------------------------------------------------------------

@pytest.mark.slow
def test_page_isolated_draw_upload_worker_and_parity(run, tmp_path):
    expected = p2p_translate(run["export"] / "generator.onnx", run["pair"], tmp_path / "ref")
    assert expected.shape == (256, 256, 3)  # the label half, at its own size
    with served(run["sites"]["fp32"]) as url, browser(tmp_path) as context:
        page = open_page(context, url)
        info = page.evaluate("window.p2p.ready.then(i => i)")
        assert info == page.evaluate("window.p2p.info")
        cores = page.evaluate("navigator.hardwareConcurrency")
        assert info["backend"] == "wasm" and info["isolated"] is True
        assert info["threads"] == cores and cores > 1  # as many as isolation allows
        assert "no WebGPU adapter" in info["note"]  # headless, --disable-gpu: said, not hidden
        assert info["metadata"]["model_precision"] == "fp32"
        assert f"WASM, {cores} threads" in page.text_content("#model")
        # the model runs in the worker: onnxruntime-web is never loaded by the page itself
        assert any(w.url.endswith("/worker.js") for w in page.workers)
        assert page.evaluate("typeof window.ort") == "undefined"

        # the API: the file's pixels -> what p2p-translate writes for that file
        got = translate_in_page(page, run["pair"])
        assert got.shape == expected.shape
        close = np.abs(got.astype(int) - expected.astype(int)) <= 1
        assert close.mean() >= 0.999, close.mean()
        assert page.evaluate("window.p2p.last.half") == "right"

        # upload: the UI path, the same answer shown in #output
        page.set_input_files("#upload", str(run["pair"]))
        page.wait_for_function("() => document.getElementById('status').textContent"
                               ".startsWith('translated')")
        page.wait_for_function("() => document.getElementById('output').naturalWidth > 0")
        assert (np.abs(shown_output(page).astype(int) - expected.astype(int)) <= 1).mean() >= 0.999
        assert f"on wasm, {cores} threads" in page.text_content("#status")

        # draw a 'window' rectangle; the main thread keeps painting while the worker runs
        page.uncheck("#auto")
        box = page.locator("#input").bounding_box()
        scale = box["width"] / page.evaluate("document.getElementById('input').width")
        at = lambda x, y: (box["x"] + scale * x + 1, box["y"] + scale * y + 1)  # noqa: E731
        page.click("[data-tool=rect]")
        page.click(".swatch[data-colour=window]")
        page.mouse.move(*at(10, 10))
        page.mouse.down()
        page.mouse.move(*at(40, 50), steps=4)
        page.mouse.up()
        before = page.evaluate("document.getElementById('output').src")
        frames = page.evaluate("""async () => {
            let frames = 0, stop = false;
            const tick = () => { frames++; if (!stop) requestAnimationFrame(tick); };
            requestAnimationFrame(tick);
            document.getElementById("translate").click();
            const t0 = performance.now();
            while (!document.getElementById("status").textContent.startsWith("translated")
                   || document.getElementById("output").src === arguments[0]) {
                await new Promise((r) => setTimeout(r, 5));
                if (performance.now() - t0 > 30000) break;
            }
            stop = true;
            return frames;
        }""".replace("arguments[0]", json.dumps(before)))
        assert page.evaluate("document.getElementById('output').src") != before
        assert frames >= 1
        drawn = page.evaluate("""() => { const c = document.getElementById('input');
            return Array.from(c.getContext('2d').getImageData(20, 20, 1, 1).data.slice(0, 3)); }""")
        assert drawn == [0, 128, 255]
        assert not page.p2p_errors, page.p2p_errors


@pytest.mark.slow
def test_page_without_isolation_runs_one_thread(run, tmp_path):
    with served(run["sites"]["fp32"], isolation=False) as url, browser(tmp_path) as context:
        page = open_page(context, url)
        info = page.evaluate("window.p2p.info")
        assert info["isolated"] is False and info["threads"] == 1
        assert "not cross-origin isolated: one WASM thread" in info["note"]
        assert "WASM, 1 thread" in page.text_content("#model")
        # ?threads= cannot ask for more than isolation allows
        page2 = open_page(context, url + "?threads=4")
        assert page2.evaluate("window.p2p.info.threads") == 1
        out = translate_in_page(page2, run["pair"])
        assert out.shape == (256, 256, 3) and out.std() > 0


@pytest.mark.slow
def test_fp16_and_int8_pages_within_40_db_of_fp32(run, tmp_path):
    # Images like those the INT8 export calibrated on and was verified with (>= 40 dB in
    # Python): the page must keep that bound, running the same file in the browser.
    inputs = [png(np.clip(np.rint((x.transpose(1, 2, 0) + 1) * 127.5), 0, 255).astype(np.uint8),
                  tmp_path / f"in{k}.png") for k, x in enumerate(images(4, seed=3))]
    outputs = {}
    with browser(tmp_path) as context:
        for precision in ("fp32", "fp16", "int8"):
            with served(run["sites"][precision]) as url:
                page = open_page(context, url)
                assert page.evaluate("window.p2p.info.metadata.model_precision") == precision
                outputs[precision] = np.stack([translate_in_page(page, p) for p in inputs])
                page.close()
    for precision in ("fp16", "int8"):
        db = psnr(outputs[precision].astype(np.float64), outputs["fp32"].astype(np.float64))
        print(f"{precision} page vs FP32 page: {db:.1f} dB")
        assert db >= 40.0, (precision, db)
    assert not np.array_equal(outputs["int8"], outputs["fp32"])  # really the INT8 file


@pytest.mark.slow
def test_page_runs_webgpu_where_an_adapter_exists(run, tmp_path):
    """SwiftShader's software WebGPU adapter: the page takes WebGPU, says so, and its output
    is p2p-translate's (FP32) within 1 level on >= 99.9% of pixels."""
    expected = p2p_translate(run["export"] / "generator.onnx", run["pair"], tmp_path / "ref")
    with served(run["sites"]["fp32"]) as url, browser(tmp_path, webgpu=True) as context:
        page = open_page(context, url, timeout_ms=300_000)
        info = page.evaluate("window.p2p.info")
        if info["backend"] != "webgpu":
            pytest.skip(f"no WebGPU adapter in this chromium, even SwiftShader's: {info['note']}")
        assert "WebGPU" in page.text_content("#model") and info["note"] == ""
        got = translate_in_page(page, run["pair"])
        assert (np.abs(got.astype(int) - expected.astype(int)) <= 1).mean() >= 0.999
        # ?backend=wasm: WASM even where WebGPU exists
        wasm = open_page(context, url + "?backend=wasm")
        assert wasm.evaluate("window.p2p.info.backend") == "wasm"


@pytest.mark.parametrize("kind", ["4-band", "16-bit"])
def test_a_model_the_page_cannot_feed_is_refused_before_anything_is_fetched(tmp_path, kind):
    """The page draws and shows 8-bit 1- or 3-band canvases: a 4-band model would get a made-up
    zero band, a 16-bit one would lose its depth. One line, nothing written or fetched."""
    from onnx_models import identity_model
    from p2p.export.web import WebConfig, write_site
    from p2p.runtime.errors import ModelError

    meta = (dict(in_channels=4, out_channels=4) if kind == "4-band" else
            dict(output_depth="uint16", output_range=(0.0, 65535.0)))
    model = identity_model(tmp_path / "g.onnx", verified=True, **meta)
    with pytest.raises(ModelError, match="cannot run on the page"):
        write_site([model], WebConfig(output=tmp_path / "site", cache_dir=tmp_path / "empty"),
                   say=lambda msg: None)
    assert not (tmp_path / "site").exists() and not (tmp_path / "empty").exists()

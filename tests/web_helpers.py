"""What the --web tests and benchmarks share: the onnxruntime-web tarball in a test cache, a
site served on 127.0.0.1 (with or without isolation), and headless Debian chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2p.runtime import webruntime
from p2p.runtime.errors import DownloadError
from p2p.runtime.webserve import make_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def real_tarball() -> Path:
    """The verified onnxruntime-web tarball in the user's p2p cache, fetched once from the
    registry; the calling test skips (saying why) when it is not cached and cannot be."""
    try:
        return webruntime.ensure_tarball()
    except DownloadError as e:
        pytest.skip(f"onnxruntime-web not cached and the npm registry is unreachable: {e}")


def seed_cache(cache: Path, tarball: Path) -> None:
    """Put the verified tarball where ``ensure_tarball`` looks under ``cache``."""
    dest = webruntime.cached_tarball(cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        os.symlink(tarball, dest)


@contextlib.contextmanager
def served(site: Path, isolation: bool = True):
    """http://127.0.0.1:<port>/ serving ``site`` as p2p-serve --web does."""
    server = make_server(site, port=0, isolation=isolation, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# WebGPU in headless chromium: only through SwiftShader, the software Vulkan adapter.
WEBGPU_FLAGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader",
                "--enable-features=Vulkan", "--use-angle=swiftshader"]


@contextlib.contextmanager
def browser(tmp: Path, webgpu: bool = False):
    """A headless chromium context (Debian's binary), or a skip saying what is missing;
    ``webgpu``: with SwiftShader's WebGPU adapter instead of --disable-gpu."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright not installed: pip install 'p2p[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp), executable_path=CHROMIUM, headless=True,
            args=[f for f in FLAGS if not (webgpu and f == "--disable-gpu")]
            + (WEBGPU_FLAGS if webgpu else []),
            viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


def open_page(context, url: str, timeout_ms: int = 60_000):
    """The page at ``url`` with its model loaded; page errors collected in page.p2p_errors."""
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    page.p2p_errors = []
    page.on("pageerror", lambda e: page.p2p_errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("() => window.p2p && window.p2p.info !== null")
    page.wait_for_selector("body[data-ready='1']")
    return page


def translate_in_page(page, path: Path) -> np.ndarray:
    """window.p2p.translate on the file's decoded pixels -> (H, W, 3) uint8."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    out = page.evaluate("""async (b64) => {
        const blob = await (await fetch("data:image/png;base64," + b64)).blob();
        const bmp = await createImageBitmap(blob, {colorSpaceConversion: "none",
                                                   premultiplyAlpha: "none"});
        const c = new OffscreenCanvas(bmp.width, bmp.height).getContext("2d");
        c.drawImage(bmp, 0, 0);
        const r = await window.p2p.translate(c.getImageData(0, 0, bmp.width, bmp.height));
        let s = "";
        for (const v of r.data) s += String.fromCharCode(v);
        return [r.width, r.height, btoa(s)];
    }""", data)
    w, h, b64 = out
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 4)[..., :3]


def shown_output(page) -> np.ndarray:
    """The page's #output image as (H, W, 3) uint8."""
    w, h, b64 = page.evaluate("""() => {
        const el = document.getElementById("output");
        const c = document.createElement("canvas");
        c.width = el.naturalWidth; c.height = el.naturalHeight;
        const ctx = c.getContext("2d");
        ctx.drawImage(el, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let s = "";
        for (const v of d) s += String.fromCharCode(v);
        return [c.width, c.height, btoa(s)];
    }""")
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 4)[..., :3]


def png(a: np.ndarray, path: Path) -> Path:
    Image.fromarray(a).save(path)
    return path


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(Path(path).read_bytes())).convert("RGB"))

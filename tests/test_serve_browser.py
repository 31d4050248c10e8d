"""The drawing page in a real browser: Debian's chromium, headless, driven by playwright.

Draws a filled rectangle and a pencil stroke on the canvas, translates, and checks that the
image shown came from POST /translate and holds what was drawn (the model is the identity,
so the answer is the drawing itself, pixel for pixel). Then undo, clear and upload.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

from onnx_models import identity_model
from p2p.runtime.engine import Engine
from serve_helpers import live_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The facade palette's colours, as app.js defines them.
BACKGROUND, WINDOW, SHOP = [0, 0, 222], [0, 128, 255], [174, 0, 1]

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright not installed: pip install 'p2p[dev]'")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip("chromium not installed (Debian: apt-get install -y chromium)",
                allow_module_level=True)


def pixel(page, selector, x, y):
    """[r, g, b] at (x, y) of a canvas, or of an <img> drawn onto a scratch canvas."""
    return page.evaluate("""([sel, x, y]) => {
        const el = document.querySelector(sel);
        let c = el;
        if (el.tagName === "IMG") {
            c = document.createElement("canvas");
            c.width = el.naturalWidth; c.height = el.naturalHeight;
            c.getContext("2d").drawImage(el, 0, 0);
        }
        return Array.from(c.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3));
    }""", [selector, x, y])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = identity_model(tmp_path_factory.mktemp("m") / "identity.onnx", dynamic_size=True)
    engine = Engine(model, "cpu", batch_size=4, threads=1,
                    cache_dir=tmp_path_factory.mktemp("cache"))
    with live_server(engine) as (url, _):
        yield url


@pytest.mark.slow
def test_draw_translate_undo_clear_upload(server, tmp_path):
    url = server
    requests = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.on("request", lambda r: requests.append(r.url))
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']")
            assert page.evaluate("document.getElementById('input').width") == 256
            page.uncheck("#auto")  # translate by the button, so each response is awaited

            # A filled 'window' rectangle from canvas (40, 60) to (120, 160): the canvas is
            # 256 px shown at 512 CSS px, so page coordinates are doubled.
            box = page.locator("#input").bounding_box()
            at = lambda x, y: (box["x"] + 2 * x + 1, box["y"] + 2 * y + 1)  # noqa: E731
            page.click("[data-tool=rect]")
            page.click(".swatch[data-colour=window]")
            page.mouse.move(*at(40, 60))
            page.mouse.down()
            page.mouse.move(*at(80, 100), steps=4)
            page.mouse.move(*at(120, 160), steps=4)
            page.mouse.up()
            # A 'shop' pencil stroke along y = 220.
            page.click("[data-tool=pencil]")
            page.click(".swatch[data-colour=shop]")
            page.mouse.move(*at(20, 220))
            page.mouse.down()
            page.mouse.move(*at(200, 220), steps=10)
            page.mouse.up()
            assert pixel(page, "#input", 80, 110) == WINDOW
            assert pixel(page, "#input", 100, 220) == SHOP
            assert pixel(page, "#input", 10, 10) == BACKGROUND

            with page.expect_response(lambda r: r.url.startswith(url + "/translate")) as info:
                page.click("#translate")
            response = info.value
            assert response.status == 200 and response.request.method == "POST"
            assert response.headers["content-type"] == "image/png"
            page.wait_for_function("() => { const o = document.getElementById('output');"
                                   " return o.complete && o.naturalWidth > 0; }")
            shown = page.evaluate("document.getElementById('output').src")
            assert shown.startswith("blob:") and shown == page.get_attribute("#download", "href")
            assert page.evaluate("document.getElementById('output').naturalWidth") == 256
            for xy, want in (((80, 110), WINDOW), ((100, 220), SHOP), ((10, 10), BACKGROUND)):
                assert pixel(page, "#output", *xy) == want, xy
            assert response.headers["x-p2p-batch-size"] == "1"  # p2p-serve's own header
            assert "translated in" in page.text_content("#status")

            page.click("#undo")  # the stroke goes, the rectangle stays
            assert pixel(page, "#input", 100, 220) == BACKGROUND
            assert pixel(page, "#input", 80, 110) == WINDOW
            page.click("#clear")
            assert pixel(page, "#input", 80, 110) == BACKGROUND
            page.click("#undo")  # clear is undoable too
            assert pixel(page, "#input", 80, 110) == WINDOW

            # Upload a 2:1 pix2pix pair: the AtoB model's input half (left, red) is drawn.
            pair = tmp_path / "pair.png"
            img = np.zeros((32, 64, 3), np.uint8)
            img[:, :32] = (255, 0, 0)
            img[:, 32:] = (0, 255, 0)
            Image.fromarray(img).save(pair)
            with page.expect_response(lambda r: r.url.startswith(url + "/translate")) as info:
                page.set_input_files("#upload", str(pair))
            assert info.value.status == 200
            assert pixel(page, "#input", 128, 128) == [255, 0, 0]
            page.wait_for_function("() => document.getElementById('status').textContent"
                                   ".startsWith('translated')")
            assert not errors, errors
        finally:
            browser.close()
    # Offline: every request the page made went to this server (or stayed in memory).
    assert requests and all(r.startswith(url) or r.startswith(("blob:", "data:"))
                            for r in requests), requests

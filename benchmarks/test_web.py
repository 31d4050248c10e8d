"""The --web page's speed: one 256x256 image through the generator in headless chromium
(onnxruntime-web, WASM, 1 and 2 threads), FP32 and INT8, ngf 32 and 64, beside native
onnxruntime (CPU provider) on the same CPU and threads; and the page's own cost beyond
``session.run`` (preprocessing, postprocessing, the worker's messages; goal <= 10%).

    pytest benchmarks/test_web.py --benchmark-only -s     # prints the BENCHMARKS.md rows

The generators are random-weight U-Net-256s exported by p2p-export's own code (speed does not
depend on the weights); INT8 calibrated on 16 facades train label maps. Each browser case is
2 warm-up images then ROUNDS timed ones; times are medians. Needs chromium, playwright, the
onnxruntime-web tarball (cached or fetched once) and the int8 extra.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchlib import FACADES, cpu_flags, cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from web_helpers import browser, open_page, real_tarball, seed_cache, served  # noqa: E402

ROUNDS = 8
ROWS: list[str] = []


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """{(ngf, precision): site folder} and {(ngf, precision): model file}."""
    pytest.importorskip("torch", reason="exporting the benchmark generators needs torch")
    pytest.importorskip("nncf", reason="the INT8 cases need nncf (pip install 'p2p[int8]')")
    import torch

    from p2p.export.load import Overrides
    from p2p.export.onnx import ExportConfig, main as export
    from p2p.export.web import WebConfig, write_site
    from p2p.trainer.models import ModelConfig, UnetGenerator, init_weights

    tarball = real_tarball()
    root = tmp_path_factory.mktemp("webbench")
    seed_cache(root / "cache", tarball)
    out, models = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("P2P_CACHE", str(root / "cache"))
        for ngf in (32, 64):
            torch.manual_seed(0)
            folder = root / f"ngf{ngf}"
            folder.mkdir()
            g = init_weights(UnetGenerator(ModelConfig(ngf=ngf)))
            torch.save(g.state_dict(), folder / "latest_net_G.pth")
            fp32 = folder / "generator.onnx"
            export(ExportConfig(source=folder / "latest_net_G.pth", output=fp32, int8=True,
                                calibration=FACADES / "train", calibration_images=16,
                                overrides=Overrides(direction="BtoA", ngf=ngf)))
            for precision, model in (("fp32", fp32), ("int8", folder / "generator.int8.onnx")):
                site = root / f"site-{ngf}-{precision}"
                write_site([model], WebConfig(site, webgpu=False, progress=False),
                           lambda s: None)
                out[(ngf, precision)], models[(ngf, precision)] = site, model
    return out, models


def facade() -> np.ndarray:
    """A real 256x256 facade label map (the right half of val/1.jpg), RGBA uint8."""
    from PIL import Image

    from p2p.runtime.images import open_rgb

    im = open_rgb(sorted((FACADES / "val").glob("*.jpg"))[0])
    half = np.asarray(im.crop((256, 0, 512, 256)).convert("RGBA"))
    return half


def native_ms(model: Path, threads: int) -> float:
    """Median ms of onnxruntime's CPU provider on one 1x3x256x256 image, ``threads`` threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    for _ in range(2):
        sess.run(None, {"input": x})
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("ngf", [32, 64])
def test_page_latency(benchmark, sites, tmp_path, ngf, precision, threads):
    site_of, model_of = sites
    image = facade()
    with served(site_of[(ngf, precision)]) as url, browser(tmp_path) as context:
        page = open_page(context, f"{url}?backend=wasm&threads={threads}", timeout_ms=300_000)
        info = page.evaluate("window.p2p.info")
        assert info["backend"] == "wasm" and info["threads"] == threads, info
        page.evaluate("""(px) => { window.benchImage = new ImageData(
            Uint8ClampedArray.from(px), 256, 256); }""", image.ravel().tolist())
        run = "async () => { await window.p2p.translate(window.benchImage); return window.p2p.last; }"
        for _ in range(2):
            page.evaluate(run)
        lasts = []
        benchmark.pedantic(lambda: lasts.append(page.evaluate(run)), rounds=ROUNDS, iterations=1)
    page_ms = statistics.median(x["page"] for x in lasts)
    run_ms = statistics.median(x["run"] for x in lasts)
    pre_ms = statistics.median(x["pre"] for x in lasts)
    post_ms = statistics.median(x["post"] for x in lasts)
    native = native_ms(model_of[(ngf, precision)], threads)
    overhead = page_ms / run_ms - 1
    size_mb = model_of[(ngf, precision)].stat().st_size / 1e6
    benchmark.extra_info.update(
        kind="web", ngf=ngf, precision=precision, threads=threads, page_ms=page_ms,
        run_ms=run_ms, pre_ms=pre_ms, post_ms=post_ms, native_ms=native,
        overhead=overhead, model_mb=size_mb, cpu=cpu_model(),
        flags=sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx_vnni"))))
    row = (f"| {ngf} | {precision.upper()} ({size_mb:.1f} MB) | {threads} | {page_ms:.0f} | "
           f"{run_ms:.0f} | {pre_ms:.1f} + {post_ms:.1f} | {100 * overhead:.1f}% | "
           f"{native:.0f} | {run_ms / native:.1f}x |")
    ROWS.append(row)
    print("\n" + row)


def teardown_module(module):
    if ROWS:
        print("\n| ngf | model | WASM threads | page ms/image | session.run ms | pre + post ms "
              "| page overhead | native onnxruntime ms | browser/native |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(ROWS))

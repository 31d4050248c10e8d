"""p2p-serve against a real uvicorn server on 127.0.0.1: formats, limits, batching, metrics.

Batching, queueing and timeouts are made deterministic with ``GatedEngine``: the first batch
blocks inside the engine until the test opens the gate, so what queues behind it is known.
"""

from __future__ import annotations

import asyncio
import io
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from onnx_models import constant_model, conv_model, identity_model
from p2p.runtime import telemetry as metrics
from p2p.runtime.batcher import InferenceError, MicroBatcher, QueueFull
from p2p.runtime.engine import Engine
from p2p.runtime.server import STATIC, ServeConfig, decode, encode
from serve_helpers import GatedEngine, live_server

BIN = Path(sys.executable).parent


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def noise(h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve-models")
    return {
        "identity": identity_model(d / "identity.onnx", dynamic_size=True),
        "conv": conv_model(d / "conv.onnx", image_size=32),
        "lab": constant_model(d / "lab.onnx", bias=[0.5, -0.5], in_channels=1, out_channels=2,
                              color_space="lab", dynamic_size=True),
    }


def engine(path, tmp_path_factory):
    return Engine(path, "cpu", batch_size=16, threads=1, cache_dir=tmp_path_factory.mktemp("c"))


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """One plain server (identity model, any size) shared by the simple API tests."""
    with live_server(engine(models["identity"], tmp_path_factory)) as (url, service):
        yield url, service


@pytest.fixture
def gated(models, tmp_path_factory):
    """Start servers around a GatedEngine over the fixed-size conv model."""
    def start(**cfg):
        eng = GatedEngine(engine(models["conv"], tmp_path_factory))
        return eng, live_server(eng, **cfg)
    return start


def post_many(url, bodies, **kw):
    with httpx.Client(timeout=30) as c, ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: c.post(url + "/translate", content=b, **kw), bodies))


# --- the API ----------------------------------------------------------------------------------

def test_png_round_trip_is_exact(server):
    url, _ = server
    img = noise(24, 40)  # not a multiple of the model's 8: padded, run, cropped back
    r = httpx.post(url + "/translate", content=png(img), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-p2p-batch-size"] == "1"
    np.testing.assert_array_equal(pixels(r.content), img)


def test_output_format_from_query_or_accept(server):
    url, _ = server
    body = png(noise(16, 16))
    cases = [({"params": {"format": "jpg"}}, b"\xff\xd8\xff"),
             ({"headers": {"Accept": "image/jpeg"}}, b"\xff\xd8\xff"),
             ({"headers": {"Accept": "text/html, image/webp;q=0.5, image/jpeg;q=0.9"}},
              b"\xff\xd8\xff"),
             ({"headers": {"Accept": "*/*"}}, b"\x89PNG"),
             ({"params": {"format": "png"}, "headers": {"Accept": "image/jpeg"}}, b"\x89PNG")]
    for kw, magic in cases:
        r = httpx.post(url + "/translate", content=body, **kw)
        assert r.status_code == 200 and r.content.startswith(magic), kw
    r = httpx.post(url + "/translate", content=body, params={"format": "gif"})
    assert r.status_code == 400 and "png|jpg|webp" in r.json()["error"]


def test_reads_any_format_the_runtime_reads(server):
    url, _ = server
    img = Image.fromarray(noise(16, 24))
    for fmt in ("JPEG", "WEBP", "BMP", "GIF", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        r = httpx.post(url + "/translate", content=buf.getvalue())
        assert r.status_code == 200, (fmt, r.text)
        assert Image.open(io.BytesIO(r.content)).size == (24, 16)


def test_bad_images_are_400_with_reason_and_do_not_touch_others(server):
    url, service = server
    good = [noise(16, 16, seed=i) for i in range(6)]
    bad = [b"this is not an image", png(noise(16, 16))[:60], b""]
    responses = post_many(url, [png(g) for g in good] + bad)
    for img, r in zip(good, responses[:6]):
        assert r.status_code == 200
        np.testing.assert_array_equal(pixels(r.content), img)
    for r in responses[6:]:
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/json"
    assert responses[6].json()["error"] == "request body: not an image Pillow can read"
    assert responses[7].json()["error"].startswith("request body: cannot decode")
    assert "empty request body" in responses[8].json()["error"]
    r = httpx.post(url + "/translate", files={"image": png(good[0])})
    assert r.status_code == 400 and "not a multipart form" in r.json()["error"]
    assert service.metrics.sample("p2p_errors_total", reason="bad_image") >= 4
    assert service.batcher.waiting == 0  # refused requests gave their places back


def test_split_parameter(server):
    url, _ = server
    pair = noise(16, 32)  # 2:1, a pix2pix A|B image: auto takes the AtoB model's left half
    r = httpx.post(url + "/translate", content=png(pair))
    np.testing.assert_array_equal(pixels(r.content), pair[:, :16])
    r = httpx.post(url + "/translate", content=png(pair), params={"split": "none"})
    np.testing.assert_array_equal(pixels(r.content), pair)
    r = httpx.post(url + "/translate", content=png(pair), params={"split": "middle"})
    assert r.status_code == 400 and "auto|left|right|none" in r.json()["error"]


def test_body_over_limit_is_413(models, tmp_path_factory):
    with live_server(engine(models["identity"], tmp_path_factory),
                     max_body_bytes=2000) as (url, service):
        big = png(noise(64, 64))
        assert len(big) > 2000
        r = httpx.post(url + "/translate", content=big)  # Content-Length: refused unread
        assert r.status_code == 413 and "2000-byte limit" in r.json()["error"]
        r = httpx.post(url + "/translate", content=iter([big[:1500], big[1500:]]))  # chunked
        assert r.status_code == 413
        assert httpx.post(url + "/translate", content=png(noise(8, 8))).status_code == 200
        assert service.metrics.sample("p2p_errors_total", reason="too_large") == 2


def test_lab_model_answers_in_colour(models, tmp_path_factory):
    with live_server(engine(models["lab"], tmp_path_factory)) as (url, _):
        r = httpx.post(url + "/translate", content=png(noise(16, 24)))
        out = pixels(r.content)
        assert r.status_code == 200 and out.shape == (16, 24, 3)
        r_, g_, b_ = out.reshape(-1, 3).mean(0)
        assert g_ + 20 < min(r_, b_)  # a > 0 (red, not green), b < 0 (blue): magenta, not grey


def test_healthz_and_metrics(server):
    url, _ = server
    h = httpx.get(url + "/healthz").json()
    assert h["status"] == "ok" and h["provider"] == "cpu" and h["precision"] == "fp32"
    assert h["model"].endswith("identity.onnx") and h["dynamic_size"] is True
    httpx.post(url + "/translate", content=png(noise(8, 8)))
    r = httpx.get(url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=")  # prometheus_client's
    m = metrics.parse(r.text)
    assert m['p2p_requests_total{status="200"}'] >= 1
    assert m["p2p_queue_depth"] == 0
    info = [k for k in m if k.startswith("p2p_model_info")]
    assert len(info) == 1 and 'provider="cpu"' in info[0] and m[info[0]] == 1
    assert 'precision="fp32"' in info[0]
    buckets = [v for k, v in m.items() if k.startswith("p2p_request_latency_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == m["p2p_request_latency_seconds_count"]
    assert m['p2p_batch_size_bucket{le="+Inf"}'] == m["p2p_batch_size_count"] >= 1


def test_page_and_static_files_are_offline(server):
    url, _ = server
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "<canvas" in page.text
    for name in ("app.js", "app.css"):
        assert httpx.get(f"{url}/static/{name}").status_code == 200
    for f in STATIC.iterdir():  # no CDN, fonts or analytics: the page must work offline
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", f.read_text()), f


# --- micro-batching, queue, timeouts (deterministic with GatedEngine) -------------------------

def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_concurrent_requests_share_a_batch_and_the_loop_stays_free(gated):
    eng, srv = gated(max_batch=16, max_wait_ms=5)
    imgs = [noise(32, 32, seed=i) for i in range(8)]
    with srv as (url, service), ThreadPoolExecutor(8) as pool, httpx.Client(timeout=30) as c:
        eng.gate.clear()
        first = pool.submit(c.post, url + "/translate", content=png(imgs[0]))
        assert eng.entered.acquire(timeout=10)  # request 0 is inside the engine, blocked
        rest = [pool.submit(c.post, url + "/translate", content=png(i)) for i in imgs[1:]]
        wait_for(lambda: service.batcher.waiting == 7)
        t0 = time.perf_counter()  # inference is blocked, the event loop is not
        assert c.get(url + "/healthz").status_code == 200
        m = metrics.parse(c.get(url + "/metrics").text)
        assert time.perf_counter() - t0 < 2.0
        assert m["p2p_queue_depth"] == 7
        eng.gate.set()
        responses = [first.result()] + [f.result() for f in rest]
        m = metrics.parse(c.get(url + "/metrics").text)
    assert eng.calls == [1, 7]
    assert [r.headers["x-p2p-batch-size"] for r in responses] == ["1"] + ["7"] * 7
    meta = eng.metadata
    for img, r in zip(imgs, responses):  # each answer is its own image's, not a neighbour's
        prep = decode(png(img), meta, "auto")
        want = encode(eng.engine.run(prep.array[None])[0], prep, meta, "png")
        assert np.abs(pixels(r.content).astype(int) - pixels(want)).max() <= 1
    assert m["p2p_batch_size_count"] == 2
    assert m['p2p_batch_size_bucket{le="1.0"}'] == 1 and m['p2p_batch_size_bucket{le="6.0"}'] == 1
    assert m['p2p_batch_size_bucket{le="7.0"}'] == 2 and m["p2p_batch_size_sum"] == 8
    assert m['p2p_requests_total{status="200"}'] == 8


def test_full_queue_is_503_with_retry_after(gated):
    eng, srv = gated(max_batch=1, max_queue=2)
    body = png(noise(32, 32))
    with srv as (url, service), ThreadPoolExecutor(4) as pool, httpx.Client(timeout=30) as c:
        eng.gate.clear()
        running = pool.submit(c.post, url + "/translate", content=body)
        assert eng.entered.acquire(timeout=10)
        queued = [pool.submit(c.post, url + "/translate", content=body) for _ in range(2)]
        wait_for(lambda: service.batcher.waiting == 2)
        r = c.post(url + "/translate", content=body)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "queue full" in r.json()["error"]
        eng.gate.set()
        assert [f.result().status_code for f in [running] + queued] == [200, 200, 200]
    assert (service.metrics.sample("p2p_errors_total", reason="queue_full") == 1
            and service.metrics.sample("p2p_requests_total", status="503") == 1)


def test_timeout_is_504_and_queued_requests_that_timed_out_never_run(gated):
    eng, srv = gated(timeout_s=0.5)
    body = png(noise(32, 32))
    with srv as (url, service), ThreadPoolExecutor(2) as pool, httpx.Client(timeout=30) as c:
        eng.gate.clear()
        a = pool.submit(c.post, url + "/translate", content=body)
        assert eng.entered.acquire(timeout=10)
        b = pool.submit(c.post, url + "/translate", content=body)
        ra, rb = a.result(), b.result()
        assert ra.status_code == rb.status_code == 504
        assert "--timeout-s" in ra.json()["error"]
        eng.gate.set()
        assert c.post(url + "/translate", content=body).status_code == 200
    assert eng.calls == [1, 1]  # a, then the last request: b was dropped unrun
    assert service.metrics.sample("p2p_errors_total", reason="timeout") == 2 and service.batcher.waiting == 0


class PickyEngine(GatedEngine):
    """Fails any batch holding an all-black image: an input the engine rejects."""

    def run(self, x):
        out = super().run(x)
        if any((xi == -1).all() for xi in x):
            raise RuntimeError("black image")
        return out


def test_an_input_that_fails_inference_fails_alone(models, tmp_path_factory):
    eng = PickyEngine(engine(models["conv"], tmp_path_factory))
    bodies = [png(noise(32, 32, seed=i)) for i in range(4)] + [png(np.zeros((32, 32, 3), np.uint8))]
    with live_server(eng) as (url, service), ThreadPoolExecutor(6) as pool, \
            httpx.Client(timeout=30) as c:
        eng.gate.clear()
        warm = pool.submit(c.post, url + "/translate", content=bodies[0])
        assert eng.entered.acquire(timeout=10)
        futures = [pool.submit(c.post, url + "/translate", content=b) for b in bodies]
        wait_for(lambda: service.batcher.waiting == 5)
        eng.gate.set()
        statuses = [f.result().status_code for f in futures]
        assert warm.result().status_code == 200
        assert statuses == [200, 200, 200, 200, 500]
        assert "inference failed: black image" in futures[-1].result().json()["error"]
    assert eng.calls[:2] == [1, 5] and sorted(eng.calls[2:]) == [1] * 5  # retried one by one


def test_batcher_groups_by_shape_and_respects_max_batch():
    async def scenario():
        seen = []

        def run(x):
            seen.append(x.shape)
            if np.isnan(x).any():
                raise ValueError("nan")
            return x * 2

        b = MicroBatcher(run, max_batch=3, max_wait_s=0.05, max_queue=10)
        await b.start()
        xs = [np.full((1, 4, 4), i, np.float32) for i in range(4)] + \
             [np.zeros((1, 8, 8), np.float32), np.full((1, 4, 4), np.nan, np.float32)]
        for _ in xs:
            b.admit()
        results = await asyncio.gather(*(b.submit(x) for x in xs), return_exceptions=True)
        with pytest.raises(QueueFull):
            for _ in range(11):
                b.admit()
        await b.stop()
        return seen, results

    seen, results = asyncio.run(scenario())
    for i in range(4):
        np.testing.assert_array_equal(results[i][0], np.full((1, 4, 4), 2 * i))
    assert results[4][0].shape == (1, 8, 8) and results[4][1] == 1
    assert isinstance(results[5], InferenceError)
    # batches of at most 3, one shape each: [0,1,2] | [3, nan] -> fails, retried singly | [8x8]
    assert seen[0] == (3, 1, 4, 4) and max(s[0] for s in seen) == 3
    assert (1, 1, 8, 8) in seen and seen.count((2, 1, 4, 4)) == 1


# --- the command ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_on_loopback_and_stops_cleanly(models):
    port = free_port()
    proc = subprocess.Popen([BIN / "p2p-serve", "--model", models["identity"], "--port",
                             str(port), "--no-access-log", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                h = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert h["provider"] in ("cpu", "cuda", "tensorrt", "openvino")
        r = httpx.post(f"http://127.0.0.1:{port}/translate", content=png(noise(8, 8)))
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        err = proc.stderr.read()
        assert f"http://127.0.0.1:{port}" in err and "micro-batching: up to 16 images" in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_refuses_bad_model_and_provider_in_one_line(tmp_path, models):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = subprocess.run([BIN / "p2p-serve", "--model", bad], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"Error: {bad}: not an ONNX model (unreadable or truncated protobuf)"]
    r = subprocess.run([BIN / "p2p-serve", "--model", models["identity"], "--provider", "gpu"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "'gpu' is not one of" in r.stderr
    r = subprocess.run([BIN / "p2p-serve", "--model", models["identity"], "--provider", "cpu",
                        "--precision", "bf16"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "Error: provider cpu: precision bf16 runs on openvino only (--provider openvino)"]
    # (openvino is installed here: no install hint; tests/test_precision.py blocks it)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        r = subprocess.run([BIN / "p2p-serve", "--model", models["identity"], "--provider",
                            "cuda"], capture_output=True, text=True)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
        assert r.stderr.startswith("Error: ") and "cuda" in r.stderr


def test_cli_port_in_use_exits_1(models):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([BIN / "p2p-serve", "--model", models["identity"], "--port",
                            str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another --port or --host)")


def test_defaults_bind_loopback():
    assert ServeConfig().host == "127.0.0.1"
    out = subprocess.run([BIN / "p2p-serve", "--help"], capture_output=True, text=True).stdout
    assert "[default: 127.0.0.1]" in out and "--max-queue" in out and "--timeout-s" in out


def test_stalled_uploads_get_408_and_their_connections_closed(models, tmp_path_factory):
    """Slow-loris: clients that send headers and part of a body, then stall, must not hold
    the server's connections; each gets 408 at the receive deadline and is disconnected."""
    with live_server(engine(models["identity"], tmp_path_factory),
                     receive_timeout_s=0.5) as (url, service):
        port = int(url.rsplit(":", 1)[1])
        stalled = []
        for _ in range(8):  # a bounded number of connections, all on loopback
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 100000\r\n\r\n" + png(noise(8, 8))[:20])
            stalled.append(s)
        t0 = time.monotonic()
        for s in stalled:
            reply = b""
            while chunk := s.recv(65536):  # b"" once the server closes the connection
                reply += chunk
            s.close()
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), reply
            assert b"connection: close" in head.lower()
            assert b"not received within 0.5 s (--receive-timeout-s)" in body
        assert time.monotonic() - t0 < 8
        # The server still answers, and counted the refusals.
        r = httpx.post(f"{url}/translate", content=png(noise(8, 8)))
        assert r.status_code == 200
        assert service.metrics.sample("p2p_errors_total", reason="receive_timeout") == 8

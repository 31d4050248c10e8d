"""``p2p-serve``: an exported model behind HTTP, with micro-batching and a drawing page.

    POST /translate   image bytes in (any format Pillow reads) -> PNG/JPEG/WebP/TIFF out
                      (?format=png|jpg|webp|tif, else the Accept header, else PNG (TIFF for
                      float or N-band models); ?split=...)
    GET  /healthz     JSON: model, provider, precision (what runs), sizes
    GET  /metrics     Prometheus text: requests by status, errors by reason, latency and
                      batch-size histograms, queue depth, model/provider info
    GET  /            the drawing page (static/, no network needed)

A request's trip is ``p2p-translate``'s, cut at the same joints: ``images.prepare`` (decode,
split, resize/pad, normalise) in a thread pool -> ``MicroBatcher`` -> ``Engine.run`` in the
engine thread -> ``images.to_image`` + ``images.encode`` in the thread pool. The event loop
only moves bytes, so ``/healthz`` answers while a large batch runs. Every refusal is one
JSON line ``{"error": ...}``: 400 bad input, 408 body not received within
``receive_timeout_s`` (connection closed: a slow-loris upload holds nothing for long), 413 too
large, 503 queue full (Retry-After), 504 over ``timeout_s``, 500 inference failure of that one
input.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import images
from .telemetry import ServiceMetrics
from .batcher import InferenceError, MicroBatcher, QueueFull, ShuttingDown
from .errors import ImageError, ModelError, NonFiniteOutput, P2PError

log = logging.getLogger("p2p.serve")
STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp",
               "tif": "image/tiff"}
FORMAT_ALIASES = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp", "tif": "tif",
                  "tiff": "tif"}


@dataclass(frozen=True)
class ServeConfig:
    model: Path | None = None  # required; cli.common.default_model picks one without --model
    host: str = "127.0.0.1"  # loopback unless the user says otherwise
    port: int = 8000
    provider: str = "auto"
    threads: int | None = None  # engine CPU threads; None: physical cores
    precision: str = "auto"  # auto | fp32 | bf16 | int8 (p2p.runtime.precision)
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 64  # requests admitted and not yet in a batch
    max_body_bytes: int = 20 << 20
    timeout_s: float = 30.0  # whole request after its body arrived: decode, queue, run, encode
    receive_timeout_s: float = 30.0  # the upload itself: a stalled or trickling body gets 408
    workers: int | None = None  # decode/encode threads; None: min(4, CPUs)
    access_log: bool = True
    quiet: bool = False  # uvicorn says only warnings and errors


class HTTPError(Exception):
    def __init__(self, status: int, message: str, reason: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


# --- bytes <-> images: thin adapters over p2p.runtime.images --------------------------------

class _Body(io.BytesIO):
    """Request bytes that Pillow reads like a file and that ``images``' error messages name
    as 'request body' (they format the path they were given)."""

    def __str__(self) -> str:
        return "request body"


def decode(data: bytes, meta, split: str) -> images.Prepared:
    """``images.prepare`` on bytes: the very code ``p2p-translate`` runs on files."""
    return images.prepare(_Body(data), meta, split)


def encode(y: np.ndarray, prep: images.Prepared, meta, fmt: str) -> bytes:
    return images.encode(images.to_array(y, prep, meta), fmt)


def choose_format(request: Request, meta=None) -> str:
    """?format= wins; then the Accept type with the highest q we can write and that holds
    the model's outputs; then the model's default (PNG; TIFF for float or N-band models)."""
    asked = request.query_params.get("format")
    kind = images.output_kind(meta) if meta is not None else ("uint8", 3)
    if asked is not None:
        fmt = FORMAT_ALIASES.get(asked.lower())
        if fmt is None:
            raise HTTPError(400, f"format {asked!r} is not one of {'|'.join(images.FORMATS)}",
                            "bad_request")
        why = images.format_problem(fmt, *kind)
        if why:
            raise HTTPError(400, f"the model writes {kind[1]}-band {kind[0]} images; {why}",
                            "bad_request")
        return fmt
    offers = []
    for i, part in enumerate(request.headers.get("accept", "").split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        offers.append((-q, i, media.lower()))
    for _, _, media in sorted(offers):
        for fmt, mt in MEDIA_TYPES.items():
            if media == mt and images.format_problem(fmt, *kind) is None:
                return fmt
    return images.default_format(meta) if meta is not None else "png"


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    too_large = HTTPError(413, f"request body is over the {limit}-byte limit "
                               f"(--max-body-mb)", "too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads declare no length: count
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


# --- the application ----------------------------------------------------------------------

class Service:
    """One engine, one batcher, one pool of decode/encode threads, and their metrics."""

    def __init__(self, engine, cfg: ServeConfig):
        self.engine, self.cfg, self.meta = engine, cfg, engine.metadata
        self.said_split = False  # the first automatic A|B split is logged, once
        self.batcher = MicroBatcher(engine.run, cfg.max_batch, cfg.max_wait_ms / 1000.0,
                                    cfg.max_queue, on_batch=self._on_batch)
        self.pool: ThreadPoolExecutor | None = None
        self.metrics = ServiceMetrics(
            cfg.max_batch, lambda: self.batcher.waiting,
            {"model": str(engine.path), "provider": engine.provider,
             "precision": engine.precision, "direction": self.meta.direction,
             "image_size": str(self.meta.image_size)})

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch(size, seconds)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        workers = self.cfg.workers or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="p2p-codec")
        await self.batcher.start()
        if not self.meta.dynamic_size:  # first run allocates: pay it before the first user
            s, c = self.meta.image_size, self.meta.in_channels
            with contextlib.suppress(NonFiniteOutput):  # the run was only for allocation;
                await asyncio.get_running_loop().run_in_executor(  # requests fail one by one
                    self.pool, self.engine.run, np.zeros((1, c, s, s), np.float32))
        try:
            yield
        finally:
            await self.batcher.stop()
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def translate(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            response = await self._translate(request)
        except HTTPError as e:
            self.metrics.error(e.reason)
            response = JSONResponse({"error": e.message}, e.status, headers=e.headers)
        except Exception as e:  # a bug must cost one request, not the server
            log.exception("translate: unexpected error")
            self.metrics.error("internal")
            response = JSONResponse({"error": f"internal error: {e}"}, 500)
        self.metrics.request(response.status_code, time.perf_counter() - t0)
        return response

    async def _translate(self, request: Request) -> Response:
        fmt = choose_format(request, self.meta)
        split = request.query_params.get("split", "auto")
        if split not in images.SPLITS:
            raise HTTPError(400, f"split {split!r} is not one of {'|'.join(images.SPLITS)}",
                            "bad_request")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPError(400, "send the image bytes as the request body (curl --data-binary "
                                 "@image.png), not a multipart form (curl -F)", "bad_image")
        try:
            async with asyncio.timeout(self.cfg.receive_timeout_s):
                body = await read_body(request, self.cfg.max_body_bytes)
        except TimeoutError:
            # Connection: close: the rest of the body will never be read, so the connection
            # cannot carry another request, and a stalled client must not keep it.
            raise HTTPError(408, f"request body not received within "
                                 f"{self.cfg.receive_timeout_s:g} s (--receive-timeout-s)",
                            "receive_timeout", {"Connection": "close"}) from None
        if not body:
            raise HTTPError(400, "empty request body: send the image bytes "
                                 "(curl --data-binary @image.png)", "bad_image")
        try:
            self.batcher.admit()
        except QueueFull as e:
            retry = max(1, math.ceil(self.batcher.last_batch_s * 2))
            raise HTTPError(503, str(e), "queue_full", {"Retry-After": str(retry)}) from None
        submitted = False
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                prep = await self._in_pool(decode, body, self.meta, split)
                if prep.half and split == "auto" and not self.said_split:
                    self.said_split = True  # the rule p2p-translate follows: said once
                    log.warning(images.split_note(prep, "?split=none"))
                submitted = True  # from here the batcher owns the admission
                y, batch = await self.batcher.submit(prep.array)
                data = await self._in_pool(encode, y, prep, self.meta, fmt)
        except TimeoutError:
            raise HTTPError(504, f"not done within {self.cfg.timeout_s:g} s (--timeout-s); "
                                 "the server is overloaded or the image is very large",
                            "timeout") from None
        except ImageError as e:
            raise HTTPError(400, str(e), "bad_image") from None
        except InferenceError as e:
            raise HTTPError(500, str(e), "inference") from None
        except ShuttingDown as e:
            raise HTTPError(503, str(e), "shutting_down", {"Retry-After": "5"}) from None
        except P2PError as e:
            raise HTTPError(400, str(e), "bad_request") from None
        finally:
            if not submitted:
                self.batcher.release()
        return Response(data, media_type=MEDIA_TYPES[fmt],
                        headers={"X-P2P-Batch-Size": str(batch), "Cache-Control": "no-store",
                                 "X-P2P-Half": prep.half or "whole"})

    async def healthz(self, request: Request) -> Response:
        m = self.meta
        return JSONResponse({
            "status": "ok", "model": str(self.engine.path), "provider": self.engine.provider,
            "precision": self.engine.precision,
            "direction": m.direction, "image_size": m.image_size, "dynamic_size": m.dynamic_size,
            "size_multiple": m.size_multiple, "color_space": m.color_space,
            "in_channels": m.in_channels, "max_batch": self.cfg.max_batch,
            "max_body_bytes": self.cfg.max_body_bytes,
        })

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(engine, cfg: ServeConfig) -> Starlette:
    """The ASGI app around an open ``engine`` (anything with .path, .metadata, .provider and
    .run): the caller owns the engine and closes it after the server stops."""
    service = Service(engine, cfg)
    app = Starlette(routes=[
        Route("/", service.index, methods=["GET", "HEAD"]),
        Route("/translate", service.translate, methods=["POST"]),
        Route("/healthz", service.healthz, methods=["GET"]),
        Route("/metrics", service.metrics_text, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=service.lifespan)
    app.state.service = service
    return app


def serve(cfg: ServeConfig, log_line=None) -> None:
    """The whole command: open the engine (a model or provider that cannot run fails here,
    before a port is bound), then run uvicorn until interrupted."""
    import uvicorn

    from .engine import Engine

    log_line = log_line or (lambda msg: print(msg, file=sys.stderr))
    if cfg.model is None:  # cli/ picks the default model, and says by which rule
        raise ModelError("no model given: pass --model PATH")
    model = Path(cfg.model)
    engine = Engine(model, cfg.provider, cfg.max_batch, cfg.threads, precision=cfg.precision)
    m = engine.metadata
    log_line(f"model {model} ({m.direction}, {m.image_size}px"
             f"{', dynamic size' if m.dynamic_size else ''}) on {engine.describe()}")
    log_line(f"precision {engine.precision}: {engine.choice.why}")
    for provider, why in engine.passed_over:
        log_line(f"auto: skipped {provider}: {why}")
    log_line(f"micro-batching: up to {cfg.max_batch} images, waiting at most "
             f"{cfg.max_wait_ms:g} ms; queue {cfg.max_queue}; timeout {cfg.timeout_s:g} s; "
             f"upload deadline {cfg.receive_timeout_s:g} s")
    try:
        sock = listen_socket(cfg.host, cfg.port)
        port = sock.getsockname()[1]
        log_line(f"open http://{cfg.host if ':' not in cfg.host else f'[{cfg.host}]'}:{port}/ "
                 "to draw, POST images to /translate")
        server = uvicorn.Server(uvicorn.Config(
            create_app(engine, cfg), access_log=cfg.access_log,
            log_level="warning" if cfg.quiet else "info",
            timeout_graceful_shutdown=5))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
            pass
    finally:
        engine.close()


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn does, so a taken port is one clear line, not a log and exit 3."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise P2PError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                       "(choose another --port or --host)") from None
    return sock

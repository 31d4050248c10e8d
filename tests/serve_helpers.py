"""A real uvicorn server on 127.0.0.1 in a background thread, for the p2p-serve tests."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

from p2p.runtime.server import ServeConfig, create_app


class GatedEngine:
    """Wraps an Engine so a test decides when each batch may finish: deterministic queues,
    timeouts and batch sizes without timing luck. ``calls`` records each batch's size."""

    def __init__(self, engine):
        self.engine, self.path, self.metadata = engine, engine.path, engine.metadata
        self.provider, self.precision = engine.provider, engine.precision
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)  # released each time a batch reaches the gate
        self.calls: list[int] = []
        self.warm = False

    def run(self, x):
        if not self.warm:  # the server's start-up warm-up run is not a request
            self.warm = True
            return self.engine.run(x)
        self.calls.append(len(x))
        self.entered.release()
        if not self.gate.wait(30):
            raise RuntimeError("test gate never opened")
        return self.engine.run(x)


@contextmanager
def live_server(engine, **cfg):
    """Yield the base URL of a server running ``engine`` with ServeConfig(**cfg) overrides."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, chosen by the kernel, held until uvicorn owns it
    port = sock.getsockname()[1]
    app = create_app(engine, ServeConfig(port=port, **cfg))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app.state.service
    finally:
        if isinstance(engine, GatedEngine):
            engine.gate.set()
        server.should_exit = True
        thread.join(10)
        sock.close()

"""``p2p-serve --web DIR``: a ``--web`` site on this machine, as a static host would serve it.

Static files only (the model runs in the browser, so no model and no inference library is
needed here), with the cross-origin isolation headers of the site's ``_headers`` file
(``COOP: same-origin``, ``COEP: require-corp``): onnxruntime-web then runs WASM on several
threads. ``isolation=False`` serves without them, as GitHub Pages does (one thread).
Python's standard library server, one thread per connection; stdlib only.
"""

from __future__ import annotations

import functools
import http.server
import socket
from pathlib import Path

from .errors import P2PError

# Cross-origin isolation (HTML standard): SharedArrayBuffer, and so WASM threads, needs both.
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin",
             "Cross-Origin-Embedder-Policy": "require-corp"}
# .mjs and .wasm must carry these types: browsers refuse module scripts of other types, and
# WebAssembly.instantiateStreaming needs application/wasm.
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".onnx": "application/octet-stream", ".json": "application/json"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a page loads ~12 files, two of them large
    isolation = True
    quiet = False
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self):
        if self.isolation:
            for key, value in ISOLATION.items():
                self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        if not self.quiet:
            super().log_message(format, *args)


def check_site(folder: Path) -> Path:
    """The folder, or ``P2PError`` when it is not a site written by ``--web``."""
    folder = Path(folder)
    if not (folder / "index.html").is_file() or not (folder / "model.json").is_file():
        raise P2PError(f"{folder}: not a p2p web site (no index.html and model.json); write "
                       "one with p2p-export RUN --web DIR")
    return folder


def make_server(folder: Path, host: str = "127.0.0.1", port: int = 8000,
                isolation: bool = True, quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """A bound (not yet serving) server for ``folder``; ``P2PError`` for a bad folder or a
    port that cannot be bound. ``server.server_address[1]`` is the port (``port=0``: any)."""
    folder = check_site(folder)
    handler = type("Handler", (_Handler,), {"isolation": isolation, "quiet": quiet})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (http.server.ThreadingHTTPServer,),
                        {"address_family": family, "daemon_threads": True})
    try:
        return server_class((host, port), functools.partial(handler, directory=str(folder)))
    except OSError as e:
        raise P2PError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                       "(choose another --port or --host)") from None


def serve_site(folder: Path, host: str = "127.0.0.1", port: int = 8000, isolation: bool = True,
               quiet: bool = False, log_line=print) -> None:
    """Serve ``folder`` until Ctrl-C."""
    server = make_server(folder, host, port, isolation, quiet)
    shown = f"[{host}]" if ":" in host else host
    log_line(f"serving the static site {folder} at http://{shown}:{server.server_address[1]}/ "
             + ("with cross-origin isolation (WASM threads)" if isolation else
                "WITHOUT cross-origin isolation (one WASM thread, as on GitHub Pages)"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

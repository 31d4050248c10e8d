"""onnxruntime-web for p2p's static pages: the pinned npm tarball, fetched once and checked.

    tgz = ensure_tarball()                 # $P2P_CACHE/web/onnxruntime-web-<v>.tgz, verified
    files = runtime_files(tgz)             # {"ort.wasm.min.mjs": bytes, ...}: what a page loads

The version and its SHA-512 ``dist.integrity`` (Subresource Integrity format, what
``npm view onnxruntime-web@<v> dist.integrity`` prints) are pinned here, in code: a tarball
that hashes otherwise is deleted and refused, whatever the registry says. The bytes come
through p2p's one downloader (``download.fetch``: resumable, atomic) into p2p's cache folder
(``host.cache_root``), from ``$P2P_NPM_REGISTRY`` (default the public npm registry). Only the
files the page needs leave the tarball; nothing of it is ever committed to git.

Which files: ``ort.wasm.min.mjs`` + ``ort-wasm-simd-threaded.{mjs,wasm}`` (the WASM
backend, 14.8 MB, the path every browser takes), and ``ort.webgpu.min.mjs`` +
``ort-wasm-simd-threaded.asyncify.{mjs,wasm}`` (28.7 MB, loaded only where the browser
offers a WebGPU adapter). Torch-free and onnxruntime-free.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
from pathlib import Path

from . import download
from .errors import DownloadError, HashMismatch
from .host import cache_root

PACKAGE = "onnxruntime-web"
VERSION = "1.31.1"  # measured in issue 19: FP32 outputs match Python onnxruntime to 7.3e-6
INTEGRITY = ("sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQe"
             "S7NmuZPXrQ73k82URw==")
DEFAULT_REGISTRY = "https://registry.npmjs.org"
WASM_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
WEBGPU_FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs",
                "ort-wasm-simd-threaded.asyncify.wasm")


def registry() -> str:
    """The npm registry to fetch from: ``$P2P_NPM_REGISTRY`` or the public one."""
    return (os.environ.get("P2P_NPM_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")


def tarball_name(version: str = VERSION) -> str:
    return f"{PACKAGE}-{version}.tgz"


def tarball_url(version: str = VERSION) -> str:
    """npm's tarball address: <registry>/<name>/-/<name>-<version>.tgz."""
    return f"{registry()}/{PACKAGE}/-/{tarball_name(version)}"


def cached_tarball(cache_dir: Path | None = None, version: str = VERSION) -> Path:
    return cache_root(cache_dir) / "web" / tarball_name(version)


def sri_sha512(path: Path) -> str:
    """``sha512-<base64>`` of a file (the W3C Subresource Integrity form npm publishes)."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def by_hand(dest: Path, version: str = VERSION, integrity: str = INTEGRITY) -> str:
    """What to do without network: the one line that says what to fetch and where to put it."""
    return (f"fetch {DEFAULT_REGISTRY}/{PACKAGE}/-/{tarball_name(version)} (npm pack "
            f"{PACKAGE}@{version}; integrity {integrity}) and place it at {dest}")


def ensure_tarball(cache_dir: Path | None = None, progress: bool = False,
                   version: str = VERSION, integrity: str = INTEGRITY) -> Path:
    """The verified tarball in the cache, downloaded first when absent.

    Raises ``DownloadError`` (one line, with ``by_hand``'s instructions) when it is not cached
    and the registry cannot be reached, and ``HashMismatch`` when the bytes (downloaded, or
    placed in the cache by hand) are not the pinned ones: they are deleted, never used.
    """
    dest = cached_tarball(cache_dir, version)
    if dest.is_file():
        _check(dest, integrity, f"the cached {dest}")
        return dest
    # download.fetch renames onto its dest only when whole; the SHA-512 (not the SHA-256 the
    # downloader knows) is checked on that file before it takes the cache's name.
    staging = dest.with_name(f".{dest.name}.unverified")
    url = tarball_url(version)
    try:
        download.fetch(url, staging, None, progress)
    except HashMismatch:
        raise
    except DownloadError as e:
        raise DownloadError(f"{PACKAGE} {version} is not in the cache and {e}; "
                            f"{by_hand(dest, version, integrity)}") from None
    _check(staging, integrity, url)
    os.replace(staging, dest)
    return dest


def _check(path: Path, integrity: str, what: str) -> None:
    got = sri_sha512(path)
    if got != integrity:
        path.unlink(missing_ok=True)
        raise HashMismatch(f"{what}: integrity {got} does not match the pinned {PACKAGE} "
                           f"{VERSION} integrity {integrity}; deleted, nothing was used")


def runtime_files(tarball: Path, webgpu: bool = True) -> dict[str, bytes]:
    """{file name: bytes} of the runtime files a page loads, read from ``package/dist/``."""
    names = WASM_FILES + (WEBGPU_FILES if webgpu else ())
    out = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for name in names:
                member = tar.extractfile(f"package/dist/{name}")
                if member is None:
                    raise KeyError(name)
                out[name] = member.read()
    except (KeyError, tarfile.TarError, OSError) as e:
        raise DownloadError(f"{tarball}: not a {PACKAGE} {VERSION} package ({e}); delete it "
                            "and run again") from None
    return out

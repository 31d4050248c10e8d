"""Facts about this machine and this process that several backends need.

No onnxruntime, no OpenVINO, no torch here: the exporter, the benchmarks and every backend
import these without pulling in an inference library.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from pathlib import Path


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where p2p keeps derived files (optimised graphs, TensorRT engines): ``cache_dir``, else
    ``$P2P_CACHE``, else ``~/.cache/p2p``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("P2P_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "p2p"


def physical_cores() -> int:
    """Physical cores this process may run on: SMT siblings share one core's FP units, and
    onnxruntime's convolution threads run slower, not faster, when two share a core."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        cpus = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))  # no topology (containers, macOS): count logical CPUs
    return max(1, len(cores))


_HASHES: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, remembered per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    with _HASH_LOCK:
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def cpu_identity() -> str:
    """Model name + ISA flags: onnxruntime's optimised CPU graph is specific to them."""
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        pass
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    ident = "|".join(fields.get(k, "").strip() for k in ("model name", "flags"))
    return ident or f"{platform.machine()}|{platform.processor()}"

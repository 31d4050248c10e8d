"""Facts about this machine and this process that several backends need.

No onnxruntime, no OpenVINO, no torch here: the exporter, the benchmarks and every backend
import these without pulling in an inference library.
"""

from __future__ import annotations

import ctypes
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


def cuda_devices() -> tuple[int, str]:
    """(number of CUDA devices, why none) from the CUDA driver API, no torch or onnxruntime.

    libcuda.so.1 ships with the NVIDIA driver (not with CUDA toolkits or pip wheels), so it
    is the one library whose absence means "no usable GPU here" for certain; cuInit and
    cuDeviceGetCount then say whether the driver sees a device (CUDA Driver API reference).
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    count = ctypes.c_int()
    try:
        rc = cuda.cuInit(0)
        if rc != 0:
            return 0, f"the NVIDIA driver found no usable GPU (cuInit error {rc})"
        if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return 0, "the NVIDIA driver reports no GPU"
    except AttributeError:
        return 0, "libcuda.so.1 lacks the CUDA driver API"
    return count.value, ""


def gpu_identity(device_id: int) -> str:
    """'<name>-sm<cc>-drv<version>' from the CUDA driver API (no torch, no pycuda)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        dev, major, minor, drv = (ctypes.c_int() for _ in range(4))
        name = ctypes.create_string_buffer(256)
        ok = (cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(dev), device_id) == 0
              and cuda.cuDeviceGetName(name, 256, dev) == 0
              and cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) == 0
              and cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) == 0
              and cuda.cuDriverGetVersion(ctypes.byref(drv)) == 0)
        if ok:
            return f"{name.value.decode()}-sm{major.value}{minor.value}-drv{drv.value}"
    except (OSError, AttributeError):
        pass
    return "unknown-gpu"

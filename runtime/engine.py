"""``Engine``: one inference session for an exported p2p model.

The public surface is the contract that ``p2p.export`` (validation), ``p2p-translate``,
``p2p-serve`` and the benchmarks use:

    engine = Engine(path, provider="auto", batch_size=8, threads=None, precision="auto")
    engine.metadata   # ModelMetadata read from the file
    engine.provider   # the provider that actually runs ("cpu", "cuda", ...), never a wish
    engine.precision  # what runs ("fp32", "bf16", "int8", "fp16"); engine.choice.why says why
                      # (the rule: p2p.runtime.precision)
    engine.run(x)     # NCHW float32 in [-1, 1], any batch size -> NCHW float32 in [-1, 1];
                      # NonFiniteOutput when any output value is NaN or Inf
    engine.submit(x)  # the same run started now: a concurrent.futures.Future of its output.
                      # Runs submitted back to back queue up in order, so a pipeline keeps
                      # the next batch waiting while this one's outputs are written and the
                      # backend never idles between batches (``p2p.runtime.pipeline``)

Everything about the model (names, sizes, dtype, colour space) comes from its metadata. The
session itself lives in a backend (``p2p.runtime.backends.Backend``): onnxruntime for cpu,
cuda and tensorrt, OpenVINO for openvino. The file is checked once, before any backend sees it
(``p2p.runtime.modelfile``), so every check holds for every backend. A provider that was asked
for and cannot run is a ``ProviderError`` that says why: never a silent CPU run.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NonFiniteOutput, ProviderError, choices
from .modelfile import read_model_file

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt", "openvino")


@dataclass(frozen=True)
class EngineOptions:
    """What a backend needs besides the model; one object so a new backend needs no new plumbing."""

    batch_size: int = 8
    threads: int | None = None  # CPU intra-op threads; None = physical cores
    cache_dir: Path | None = None  # None = $P2P_CACHE or ~/.cache/p2p
    fp16: bool | None = None  # TensorRT precision; None = FP16 (pix2pix's tanh output tolerates it)
    device_id: int = 0
    cuda_graphs: bool = False  # cuda only, fixed-size models only; unmeasured, so opt-in
    optimized_cache: bool = True  # cpu: reuse onnxruntime's optimised graph from the cache
    # What the backend runs, from p2p.runtime.precision.choose: None (fp32, or the file's own
    # precision on onnxruntime), "bf16" or "int8" (openvino only).
    precision: str | None = None


# --- the engine -------------------------------------------------------------------------------

class Engine:
    def __init__(self, model, provider: str = "auto", batch_size: int = 8,
                 threads: int | None = None, *, cache_dir: Path | None = None,
                 fp16: bool | None = None, device_id: int = 0, cuda_graphs: bool = False,
                 optimized_cache: bool = True, precision: str | None = "auto"):
        if provider not in PROVIDERS:
            raise ProviderError(f"unknown provider {provider!r}; allowed: {choices(PROVIDERS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.path = Path(model)
        self._backend = None
        self._pool: ThreadPoolExecutor | None = None  # submit() for backends without streams
        self._pool_lock = threading.Lock()
        # Every check of the file runs here, once, before any backend sees it.
        self.model_file = read_model_file(self.path)
        self.metadata = self.model_file.metadata
        self.options = EngineOptions(batch_size, threads, cache_dir, fp16, device_id,
                                     cuda_graphs, optimized_cache)
        # auto: what was tried before the provider that runs, and why it was passed over.
        self.passed_over: list[tuple[str, str]] = []
        from . import backends  # imported here: p2p.runtime.Engine stays cheap to import
        from .precision import open_backend  # the precision rule lives there

        if provider == "auto":
            self._backend = None
            order, self.passed_over = backends.auto_order()
            for candidate in order:
                try:
                    self._backend, self.choice = open_backend(self, candidate, precision)
                    break
                except ProviderError as e:
                    self.passed_over.append((candidate, str(e)))
            if self._backend is None:  # cpu is always last, so this is cpu's own error
                raise ProviderError(self.passed_over[-1][1])
        else:
            self._backend, self.choice = open_backend(self, provider, precision)
        self.precision = self.choice.precision  # what runs: fp32 | bf16 | int8 | fp16
        self.provider = self._backend.provider
        # A model exported with a fixed batch dimension runs in chunks of that size.
        fixed = self._backend.fixed_batch
        self.batch_size = fixed if fixed else batch_size
        self._dtype = np.float16 if self.metadata.input_dtype == "float16" else np.float32

    def describe(self) -> str:
        return f"{self._backend.describe()}, batch {self.batch_size}, precision {self.precision}"

    def check_shape(self, shape) -> None:
        """Raise ValueError unless an NCHW batch of this shape can run on this model."""
        m = self.metadata
        if len(shape) != 4 or shape[1] != m.in_channels:
            raise ValueError(f"expected NCHW with {m.in_channels} channels, got shape {tuple(shape)}")
        h, w = shape[2], shape[3]
        if not m.dynamic_size and (h, w) != (m.image_size, m.image_size):
            raise ValueError(f"model takes {m.image_size}x{m.image_size} images, got {h}x{w}")
        if m.dynamic_size and (h % m.size_multiple or w % m.size_multiple or not h or not w):
            raise ValueError(f"model takes H and W multiples of {m.size_multiple}, got {h}x{w}")
        self._backend.check_size(h, w)

    def run(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 in the model's value range, any batch size -> NCHW float32 (the
        model's output channels); ValueError for a shape the model cannot take,
        NonFiniteOutput when an output holds NaN or Inf, the backend's errors as raised."""
        return self.submit(x).result()

    def submit(self, x: np.ndarray) -> Future:
        """``run(x)`` started now; the Future's ``result()`` is its output or raises its error
        (a bad shape raises here, at once). Backends with streams of their own (OpenVINO)
        queue the work on them, first come first served; the others run it on one thread
        of the engine's, in order. Either way a second batch submitted before the first ends
        starts the moment the first does: the cores never wait for the caller to write
        outputs or gather the next batch."""
        x = np.asarray(x)
        self.check_shape(x.shape)
        n, _, h, w = x.shape
        if n == 0:
            done: Future = Future()
            done.set_result(np.zeros((0, self.metadata.out_channels, h, w), np.float32))
            return done
        chunks = [np.ascontiguousarray(x[i:i + self.batch_size], dtype=self._dtype)
                  for i in range(0, n, self.batch_size)]
        parts = [self._start(c) for c in chunks]
        out: Future = Future()
        left = [len(parts)]
        lock = threading.Lock()

        def one_done(_):
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            try:
                out.set_result(self._checked([np.asarray(p.result(), np.float32)
                                              for p in parts], n))
            except BaseException as e:  # the first chunk's error, or NonFiniteOutput
                out.set_exception(e)

        for p in parts:
            p.add_done_callback(one_done)  # a Python thread of ours: never the backend's
        return out

    def _start(self, chunk: np.ndarray) -> Future:
        if hasattr(self._backend, "submit"):
            return self._backend.submit(chunk)
        with self._pool_lock:  # one thread: the backend runs one chunk at a time, in order
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="p2p-engine")
            return self._pool.submit(self._backend.run, chunk)

    def _checked(self, outs: list[np.ndarray], n: int) -> np.ndarray:
        y = outs[0] if len(outs) == 1 else np.concatenate(outs)
        # The one check every caller gets (translate, serve, eval's models, the exporter's
        # verification): a NaN model would otherwise become black images with exit 0
        # (the uint8 cast maps NaN to 0). The batch fails; translate and serve retry a failed
        # batch image by image, so each image's own output decides its fate.
        bad = ~np.isfinite(y).reshape(n, -1).all(axis=1)
        if bad.any():
            raise NonFiniteOutput(f"{self.path.name}: the model's output holds NaN or Inf for "
                                  f"{int(bad.sum())} of {n} images (non-finite weights?); "
                                  "no image is made from it")
        return y

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

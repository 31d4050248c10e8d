"""onnxruntime backend: the cpu, cuda and tensorrt execution providers.

onnxruntime quietly drops a GPU provider it cannot load and runs on the CPU instead. This
backend makes that an error: GPU sessions run with ``session.disable_cpu_ep_fallback`` (a node
placed on the CPU refuses the session) and without Python's retry on other providers, and
``session.get_providers()`` is checked afterwards. A ``ProviderError`` then quotes
onnxruntime's own error and log lines, captured (stdout and stderr, Python and native) while
the session was created and shown only on failure, plus an install hint derived from the
installed wheel (``ortgpu.py``).

The cuda and tensorrt paths follow onnxruntime-gpu's sources and documented API and are tested
against recording fakes (tests/test_providers.py); they have not yet run on a GPU here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import ModelError, ProviderError, one_line
from ..files import remove_stale_temps
from ..host import cache_root, cpu_identity, gpu_identity, physical_cores
from ..modelfile import ModelFile
from .ortgpu import captured_output, install_hint, onnxruntime_said, tensorrt_version, trt_flag

TRT_MAX_SIDE = 1024  # TensorRT profile upper bound for H and W of dynamic-size models
KEEP_CPU_CACHE = 4  # optimised CPU graphs kept (each is as large as the model)


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise ProviderError("onnxruntime is not installed: pip install 'p2p[cpu]' "
                            "(or 'p2p[gpu]' for CUDA/TensorRT)") from None
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return import_ort().get_available_providers()
    except ProviderError:
        return []


def _short(names) -> str:
    return ", ".join(n.replace("ExecutionProvider", "") for n in names)


def _first_line(e: BaseException) -> str:
    line = one_line(e)
    # onnxruntime prefixes its messages with the C++ source location: keep the message.
    return re.sub(r"^/onnxruntime_src/\S+ [^(]*\([^)]*\) ", "", line)[:400]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


class OrtBackend:
    """One onnxruntime session; what differs per execution provider lives in its subclass
    (``OrtCpu``, ``OrtCuda``, ``OrtTensorRT``, one place each, issue 21): the EP name, the
    session it builds, ``describe``, ``check_size`` and ``run``. ``ort_backend`` picks one."""

    provider = ""  # "cpu" | "cuda" | "tensorrt"
    ep = ""  # onnxruntime's execution provider name
    label = ""  # how the error lines name the hardware

    def __init__(self, model: ModelFile, options):
        ort = self.ort = import_ort()
        self.model, self.path, self.meta = model, model.path, model.metadata
        self.opts = options
        metadata = self.meta
        available = ort.get_available_providers()
        if self.ep not in available:
            raise ProviderError(self._not_in_build(available))
        self._check_options()
        self.threads = options.threads or physical_cores()
        self.cached_graph: Path | None = None
        self.trt_cache: Path | None = None
        self.fp16 = False
        self.session = self._session()
        # Names and sizes were checked against the metadata by the model-file reader.
        inp = next(i for i in self.session.get_inputs() if i.name == metadata.input_name)
        batch = inp.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self._batch = self.fixed_batch or options.batch_size
        self._out_dtype = np.float16 if metadata.output_dtype == "float16" else np.float32
        self._bound: OrderedDict = OrderedDict()  # input shape -> (binding, in value, out value)
        self._lock = threading.Lock()  # IO bindings are per-shape buffers: one run at a time

    def _check_options(self) -> None:
        if self.opts.cuda_graphs:
            raise ProviderError(f"provider {self.provider}: CUDA graphs need provider cuda and "
                                "a fixed-size model (one input shape to capture)")

    def _session(self):
        raise NotImplementedError

    # --- session creation -------------------------------------------------------------------
    def _options(self, level=None):
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = level or ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # Spinning workers would burn the cores that decode/encode threads need between runs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The "optimised model is hardware specific" warning: the cache key covers the CPU.
        so.log_severity_level = 3
        return so

    def _create(self, model: Path, so, providers):
        try:
            return self.ort.InferenceSession(str(model), so, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{self.path}: onnxruntime cannot load it: {_first_line(e)}") from None

    def _cpu_session(self):
        """ORT_ENABLE_ALL; the optimised graph is cached on disk (keyed by model hash,
        onnxruntime version and CPU), which makes a second load ~2-3x faster on a U-Net."""
        cached = None
        if self.opts.optimized_cache:
            key = hashlib.sha256(f"{self.model.content_sha256()}|{self.ort.__version__}|"
                                 f"{cpu_identity()}".encode()).hexdigest()[:24]
            # Content only, not the name: a file validated under a temporary name by
            # p2p-export and then renamed finds its graph already cached.
            cached = cache_root(self.opts.cache_dir) / "ort-cpu" / f"{key}.onnx"
        cpu = ["CPUExecutionProvider"]
        if cached is not None and cached.is_file():
            try:
                # Already optimised: running the optimisers again only costs load time.
                s = self.ort.InferenceSession(str(cached), self._options(
                    self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL), providers=cpu)
                os.utime(cached)  # recently used: pruning keeps it
                self.cached_graph = cached
                return s
            except Exception:
                with contextlib.suppress(OSError):  # corrupt or stale: rebuild it below
                    cached.unlink(missing_ok=True)
        if cached is not None:
            # Written under a temporary name and renamed: a killed load leaves no torn cache.
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                # ...but its temp file; the next load removes those of dead processes.
                remove_stale_temps(cached.parent, r"\..+\.onnx\.(?P<pid>\d+)\.tmp")
                so = self._options()
                so.optimized_model_filepath = str(tmp)
                s = self.ort.InferenceSession(str(self.path), so, providers=cpu)
                os.replace(tmp, cached)
                self.cached_graph = cached
                self._prune(cached.parent)
                return s
            except Exception:  # unwritable cache or a bad model: load plainly (errors there)
                with contextlib.suppress(OSError):  # (a cache path under a file: ENOTDIR)
                    tmp.unlink(missing_ok=True)
        return self._create(self.path, self._options(), cpu)

    @staticmethod
    def _prune(folder: Path) -> None:
        files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[KEEP_CPU_CACHE:]:
            old.unlink(missing_ok=True)

    def _cuda_options(self) -> dict:
        """CUDA EP options (the generic provider-options parser: "1"/"0" are the values).
        use_tf32 "0": the CUDA EP runs FP32 convolutions as TF32 by default (on since
        onnxruntime 1.17 on Ampere and newer), and p2p never reports a precision that did
        not run: "cuda" is FP32."""
        cuda = {"device_id": str(self.opts.device_id), "cudnn_conv_algo_search": "EXHAUSTIVE",
                "do_copy_in_default_stream": "1", "use_tf32": "0"}
        if self.opts.cuda_graphs:
            cuda["enable_cuda_graph"] = "1"
        return cuda

    def _gpu_providers(self):
        """Provider list without the CPU provider: the session runs with
        session.disable_cpu_ep_fallback, and onnxruntime refuses that setting beside an
        explicitly listed CPU provider ("Conflicting session configuration")."""
        raise NotImplementedError

    def _gpu_session(self):
        """Load CUDA first (preload_dlls), then TensorRT (its import loads libnvinfer, which
        needs CUDA), then the session, strict about placement; everything onnxruntime prints
        on the way is kept and shown only if the provider does not start."""
        ort, err, session = self.ort, None, None
        with captured_output() as preload_log:
            if hasattr(ort, "preload_dlls"):  # finds CUDA/cuDNN installed from pip wheels
                try:
                    ort.preload_dlls()
                except Exception:
                    pass
            providers = self._gpu_providers()
        made = []
        if self.trt_cache is not None:
            made = [d for d in (*reversed(self.trt_cache.parents), self.trt_cache)
                    if not d.exists()]
            self.trt_cache.mkdir(parents=True, exist_ok=True)
            if not any(self.trt_cache.iterdir()) and "-trtunknown-" not in self.trt_cache.name:
                # (No TensorRT found: the session will fail and say why; no "building" line.)
                print(f"p2p: building a TensorRT engine for {self.path.name} (first run on this "
                      f"GPU only, can take minutes); cache: {self.trt_cache}", file=sys.stderr)
        so = self._options()
        # Partial placement is an error, not a quiet CPU run (onnxruntime's session config
        # key kOrtSessionOptionsDisableCPUEPFallback); warnings (level 2) include its
        # "Some nodes were not assigned to the preferred execution providers".
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        so.log_severity_level = 2
        with captured_output() as session_log:
            try:
                # enable_fallback=0: no quiet retry on other providers after an EP error.
                session = ort.InferenceSession(str(self.path), so, providers=providers,
                                               enable_fallback=0)
            except Exception as e:
                err = e
        said = onnxruntime_said(preload_log[0] + session_log[0])
        got = session.get_providers() if session is not None else []
        if err is not None or self.ep not in got:
            for d in reversed(made):  # no empty cache folder left behind by a failed start
                try:
                    d.rmdir()
                except OSError:
                    pass
            self.trt_cache = None
        if err is not None:
            raise ProviderError(
                f"provider {self.provider}: onnxruntime could not start {self.ep} for "
                f"{self.path.name}: {_first_line(err)}"
                f"{'; onnxruntime said: ' + said if said else ''}; "
                f"{install_hint(ort, self.provider)}")
        if self.ep not in got:
            raise ProviderError(
                f"provider {self.provider}: {self.ep} is in this onnxruntime build but did not "
                f"load (the session would run on {_short(got)})"
                f"{'; onnxruntime said: ' + said if said else ''}; "
                f"{install_hint(ort, self.provider)}")
        return session

    def _not_in_build(self, available) -> str:
        return (f"provider {self.provider}: this onnxruntime build ({self.ort.__version__}, "
                f"providers: {_short(available)}) has no {self.label}; install p2p[gpu] "
                "(pip uninstall onnxruntime && pip install 'p2p[gpu]')")

    # --- running ----------------------------------------------------------------------------
    def describe(self) -> str:
        raise NotImplementedError

    def check_size(self, h: int, w: int) -> None:
        """Any size the model's metadata allows runs (TensorRT narrows it to its profile)."""

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._run_bound(x)

    def _run_bound(self, x: np.ndarray) -> np.ndarray:
        """Inputs and outputs in device buffers reused per shape: no per-run allocation, and
        the fixed addresses CUDA graphs need (they replay one captured shape: pad to it)."""
        n = len(x)
        if self.opts.cuda_graphs and n < self._batch:
            x = np.concatenate([x, np.zeros((self._batch - n,) + x.shape[1:], x.dtype)])
        slot = self._bound.get(x.shape)
        if slot is None:
            while len(self._bound) >= 4:  # a few shapes at most (dynamic-size models)
                self._bound.popitem(last=False)
            dev = self.opts.device_id
            xin = self.ort.OrtValue.ortvalue_from_numpy(x, "cuda", dev)
            yout = self.ort.OrtValue.ortvalue_from_shape_and_type(
                (x.shape[0], self.meta.out_channels, x.shape[2], x.shape[3]), self._out_dtype,
                "cuda", dev)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.meta.input_name, xin)
            binding.bind_ortvalue_output(self.meta.output_name, yout)
            slot = self._bound[x.shape] = (binding, xin, yout)
        else:
            slot[1].update_inplace(x)
            self._bound.move_to_end(x.shape)
        binding = slot[0]
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.copy_outputs_to_cpu()[0][:n]

    def close(self) -> None:
        self._bound.clear()
        self.session = None


# --- one class per execution provider ------------------------------------------------------

class OrtCpu(OrtBackend):
    provider, ep, label = "cpu", "CPUExecutionProvider", "CPU"

    def _session(self):
        return self._cpu_session()

    def describe(self) -> str:
        cache = ", optimised graph cached" if self.cached_graph else ""
        return f"cpu ({self.threads} threads{cache})"

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.meta.output_name], {self.meta.input_name: x})[0]


class OrtCuda(OrtBackend):
    provider, ep, label = "cuda", "CUDAExecutionProvider", "CUDA"

    def _check_options(self) -> None:
        if self.opts.cuda_graphs and self.meta.dynamic_size:
            super()._check_options()

    def _session(self):
        return self._gpu_session()

    def _gpu_providers(self):
        return [("CUDAExecutionProvider", self._cuda_options())]

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.opts.cuda_graphs else ""
        return f"cuda (device {self.opts.device_id}, IO binding{graphs})"


class OrtTensorRT(OrtBackend):
    provider, ep, label = "tensorrt", "TensorrtExecutionProvider", "TensorRT"

    def _session(self):
        # FP16 unless asked otherwise: pix2pix's tanh output tolerates it (EngineOptions.fp16).
        self.fp16 = bool(self.opts.fp16 is None or self.opts.fp16)
        return self._gpu_session()

    def _gpu_providers(self):
        m, b, dev = self.meta, self.opts.batch_size, str(self.opts.device_id)
        c, s = m.in_channels, m.image_size
        lo, hi = (m.size_multiple, max(s, TRT_MAX_SIDE)) if m.dynamic_size else (s, s)
        name = m.input_name
        self.trt_cache = cache_root(self.opts.cache_dir) / "tensorrt" / _safe(
            f"{self.model.content_sha256()[:16]}-{gpu_identity(self.opts.device_id)}"
            f"-ort{self.ort.__version__}-trt{tensorrt_version()}"
            f"-{'fp16' if self.fp16 else 'fp32'}-b{b}-{lo}-{hi}")
        # trt_* booleans: "True"/"False" only (ortgpu.trt_flag; onnxruntime_pybind_state.cc).
        trt = {"device_id": dev, "trt_fp16_enable": trt_flag(self.fp16),
               "trt_engine_cache_enable": trt_flag(True),
               "trt_engine_cache_path": str(self.trt_cache),
               "trt_timing_cache_enable": trt_flag(True),
               "trt_timing_cache_path": str(self.trt_cache),
               "trt_profile_min_shapes": f"{name}:1x{c}x{lo}x{lo}",
               "trt_profile_opt_shapes": f"{name}:{b}x{c}x{s}x{s}",
               "trt_profile_max_shapes": f"{name}:{b}x{c}x{hi}x{hi}"}
        self._trt_sides = (lo, hi)
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", self._cuda_options())]

    def describe(self) -> str:
        return (f"tensorrt (device {self.opts.device_id}, {'fp16' if self.fp16 else 'fp32'}, "
                f"engine cache {self.trt_cache})")

    def check_size(self, h: int, w: int) -> None:
        lo, hi = self._trt_sides
        if not (lo <= h <= hi and lo <= w <= hi):
            raise ValueError(f"the TensorRT profile covers sides {lo}..{hi}, got {h}x{w}")


PROVIDERS = {cls.provider: cls for cls in (OrtCpu, OrtCuda, OrtTensorRT)}
EP_NAMES = {name: cls.ep for name, cls in PROVIDERS.items()}


def ort_backend(provider: str, model: ModelFile, options) -> OrtBackend:
    """The onnxruntime backend for ``provider`` ("cpu", "cuda", "tensorrt")."""
    return PROVIDERS[provider](model, options)

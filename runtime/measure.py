"""The first-run measurement behind ``--precision auto`` where CPU flags do not settle speed.

Why measure: with AVX512_BF16 but no AMX, OpenVINO's BF16 ran *slower* than FP32 on a 2-core
Intel Xeon (10.5 vs 11.9 images/s, issue 21) and ~2x *faster* on a 2-core AMD Zen 4
(BENCHMARKS.md): the same flags, opposite answers. So the first time a model runs on such a
CPU, the engine compiles each candidate precision, times them side by side on a synthetic
batch of the model's size, keeps the faster one (its compiled model is the one that runs, no
rebuild) and writes the answer to ``$P2P_CACHE/precision/<key>.json`` beside the optimised-
graph cache. The key covers the model's content, the CPU (model name and flags), the
inference library's and p2p's versions and the thread count, so a new CPU, library or model
measures again; every later start reads the answer and compiles only the winner.

Rounds are interleaved (fp32, bf16, fp32, bf16, ...) and each precision keeps its best round:
on a shared machine another process's burst slows one round, not one precision. A reduced
precision must beat FP32 by ``MARGIN`` to be chosen: FP32 is the exact path, so within noise
it wins.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from .errors import ProviderError
from .files import atomic_write
from .host import cache_root, cpu_identity, physical_cores

MARGIN = 1.05  # how much faster than FP32 a reduced precision must measure to be chosen
ROUNDS = 3  # timed rounds per precision, after one warm-up run each
LIBRARY = {"openvino": "openvino"}  # provider -> the distribution whose version keys the cache


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def cache_file(engine, provider: str, candidates: tuple[str, ...]):
    """Where this model's answer on this CPU, library and thread count lives."""
    opts = engine.options
    parts = (engine.model_file.content_sha256(), cpu_identity(), provider,
             _version(LIBRARY.get(provider, "onnxruntime")), _version("p2p"),
             str(opts.threads or physical_cores()), ",".join(candidates))
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
    return cache_root(opts.cache_dir) / "precision" / f"{key}.json"


def read_cached(path, candidates: tuple[str, ...]) -> dict | None:
    """The stored answer, or None when absent, unreadable, of other types than this module
    writes, or not one of ``candidates``: a cache entry that cannot be used is measured
    again (the cache is safe to delete, and to find damaged)."""
    try:
        data = json.loads(path.read_text())
        ips = data["images_per_s"]
        if not (isinstance(data, dict) and data["precision"] in candidates
                and isinstance(ips, dict) and set(ips) == set(candidates)
                and isinstance(data.get("measured", ""), str)):
            return None
        if all(type(v) in (int, float) and 0 < v < float("inf") for v in ips.values()):
            return data
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def speeds(backends: dict, x: np.ndarray, rounds: int = ROUNDS) -> dict[str, float]:
    """Images/s of each backend on ``x`` (N, C, H, W): one warm-up run each, then ``rounds``
    interleaved timed runs; each keeps its best (least disturbed) round."""
    best = {}
    for name, backend in backends.items():
        backend.run(x)  # first-run allocations and lazy kernel setup are not the steady state
        best[name] = float("inf")
    for _ in range(rounds):
        for name, backend in backends.items():
            t = time.perf_counter()
            backend.run(x)
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: len(x) / max(t, 1e-9) for name, t in best.items()}


def pick(measured: dict[str, float]) -> str:
    """fp32 unless another precision measured at least ``MARGIN`` times its speed."""
    fastest = max(measured, key=measured.get)
    if fastest != "fp32" and measured[fastest] < MARGIN * measured.get("fp32", 0.0):
        return "fp32"
    return fastest


def _line(data: dict, cached: bool, stored: bool = True) -> str:
    ips = data["images_per_s"]
    won = data["precision"]
    others = " vs ".join(f"{p} {ips[p]:.1f}" for p in sorted(ips, key=ips.get, reverse=True))
    how = (f"measured {data.get('measured', '?')[:10]}, cached" if cached
           else "measured now, cached for the next start" if stored
           else "measured now; the cache folder cannot be written, so every start measures")
    exact = "" if won == "fp32" else "; --precision fp32 for the exact path"
    flags = f"(no AMX, so BF16 speed is not known from the CPU flags; {how})"
    if won == "fp32" and max(ips, key=ips.get) != "fp32":  # faster, but not by the margin: say so
        return (f"auto: measured {others} images/s, under the {MARGIN:.2f}x a reduced "
                f"precision must gain over fp32 to be used {flags}")
    return f"auto: {won} is the fastest here by measurement, {others} images/s {flags}{exact}"


def race(engine, provider: str, choice, build):
    """Choose among ``choice.race`` by measurement, or by the cached answer.

    ``build(precision)`` makes a backend for one precision (``backends.create`` with that
    precision). Returns (backend of the winner, its precision, the start-up line's why);
    ``p2p.runtime.precision`` makes the Choice (this module does not import it). A candidate that
    cannot be built here (ProviderError: e.g. OpenVINO finds no BF16 unit) drops out with its
    reason in the line; FP32 always builds or its error is raised.
    """
    candidates = choice.race
    path = cache_file(engine, provider, candidates)
    data = read_cached(path, candidates)
    if data is not None:
        won = data["precision"]
        return build(won), won, _line(data, cached=True)
    built, failed = {}, []
    try:
        for p in candidates:
            try:
                built[p] = build(p)
            except ProviderError as e:
                if p == "fp32":
                    raise
                failed.append(f"{p} cannot run here: {e}")
        if len(built) == 1:
            won = next(iter(built))
            return built.pop(won), won, f"auto: {'; '.join(failed)}"
        m = engine.metadata
        n = max(1, min(engine.options.batch_size, physical_cores()))
        x = np.random.default_rng(0).uniform(
            -1, 1, (n, m.in_channels, m.image_size, m.image_size)).astype(
            np.float16 if m.input_dtype == "float16" else np.float32)
        measured = speeds(built, x)
        won = pick(measured)
        data = {"precision": won, "images_per_s": {k: round(v, 2) for k, v in measured.items()},
                "batch": n, "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": engine.path.name}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))
            stored = True
        except Exception:  # an unwritable cache costs a measurement next time, nothing more
            stored = False
        backend = built.pop(won)
        return backend, won, _line(data, cached=False, stored=stored)
    finally:
        for other in built.values():
            other.close()



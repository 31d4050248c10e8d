"""Video end to end (issue 20): ``p2p-translate clip.mp4`` frames/s against the engine's
model-only images/s at the same precision and batch, measured side by side (model-only
before and after the end-to-end run, so load from other processes hits both alike), and on
a 1280x720 clip, where the time goes: decode, resize to the model, model, resize back,
encode, each stage alone on the same frames.

Clips are made here with PyAV from the label halves of facades val images (64 distinct
frames at 25 frame/s, an AAC track): a hard clip for an encoder, since every frame is a new
picture; the model is the benchmark generator (conftest.py).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchlib import record
from p2p.runtime import images as imgs
from p2p.runtime.engine import Engine
from test_translate import run_once, translate_exe

av = pytest.importorskip("av", reason="video benchmarks need PyAV: pip install 'p2p[video]'")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from video_clips import make_clip  # noqa: E402

FRAMES = 64
CASES = (("openvino", "int8"), ("openvino", "bf16"), ("cpu", "fp32"))
BATCH = 8


def _labels(facades_val, size) -> list[np.ndarray]:
    paths = sorted(facades_val.glob("*.jpg"), key=lambda p: int(p.stem))[:FRAMES]
    out = []
    for p in paths:
        im = imgs.open_rgb(p)
        w, h = im.size
        out.append(np.asarray(im.crop((w // 2, 0, w, h)).resize(size, Image.BICUBIC)))
    return out


@pytest.fixture(scope="session")
def clip256(tmp_path_factory, facades_val) -> Path:
    return make_clip(tmp_path_factory.mktemp("video") / "facades256.mp4", rate=25,
                     images=_labels(facades_val, (256, 256)))


@pytest.fixture(scope="session")
def clip720(tmp_path_factory, facades_val) -> Path:
    return make_clip(tmp_path_factory.mktemp("video") / "facades720.mp4", rate=25,
                     images=_labels(facades_val, (1280, 720))[:48])


def _model_only(model, provider, precision, x, rounds=5) -> float:
    with Engine(model, provider, BATCH, precision=precision) as engine:
        engine.run(x)
        engine.run(x)  # warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            engine.run(x)
            times.append(time.perf_counter() - t0)
    return len(x) / statistics.median(times)


def _model(request, model_path, precision):
    return request.getfixturevalue("int8_model_path") if precision == "int8" else model_path


@pytest.mark.parametrize("provider, precision", CASES)
def test_video_256(benchmark, machine, model_path, clip256, tmp_path, provider, precision,
                   request):
    benchmark.group = "video end to end, 256x256 H.264, batch 8"
    record(benchmark, machine, kind="video", provider=provider, precision=precision,
           batch_size=BATCH, images_per_round=FRAMES)
    model = _model(request, model_path, precision)
    from video_clips import decode

    frames = decode(clip256)[0][:BATCH]
    with Engine(model, provider, BATCH, precision=precision) as engine:
        meta = engine.metadata
    x = np.stack([imgs.prepare_image(Image.fromarray(f), meta).array for f in frames])
    out = tmp_path / "out"
    cmd = [str(translate_exe()), str(clip256), "--model", str(model), "--output", str(out),
           "--provider", provider, "--precision", precision, "--batch-size", str(BATCH),
           "--overwrite", "--quiet"]
    before = _model_only(model, provider, precision, x)
    runs = []
    benchmark.pedantic(lambda: runs.append(run_once(cmd, out)), rounds=3, warmup_rounds=1)
    after = _model_only(model, provider, precision, x)
    for r in runs:
        assert (r["translated"], r["failed"]) == (1, 0), r
    e2e = statistics.median(r["rate"] for r in runs[-3:])
    model_rate = (before + after) / 2
    benchmark.extra_info.update(
        frames_per_s=round(e2e, 2), model_only_images_per_s=round(model_rate, 2),
        model_only_before_after=[round(before, 2), round(after, 2)],
        ratio=round(e2e / model_rate, 3), peak_rss_mb=max(r["rss_mb"] or 0 for r in runs))
    print(f"\nvideo 256 {provider} {precision}: {e2e:.1f} frames/s end to end, model only "
          f"{before:.1f}/{after:.1f} images/s -> {e2e / model_rate:.0%}")


def test_video_720p_where_the_time_goes(benchmark, machine, model_path, clip720, tmp_path,
                                        request):
    """Each stage alone on the same 48 frames (ms per frame, one thread of p2p's own plus
    FFmpeg's and the engine's), then the whole command; the stages overlap in the command."""
    from p2p.runtime.video import VideoReader, VideoWriter

    provider, precision = "openvino", "int8"
    try:
        model = _model(request, model_path, precision)
    except pytest.skip.Exception:
        provider, precision, model = "cpu", "fp32", model_path
    benchmark.group = "video 1280x720, where the time goes"
    record(benchmark, machine, kind="video-720p", provider=provider, precision=precision,
           batch_size=BATCH, images_per_round=48)
    stages = {}
    t0 = time.perf_counter()
    reader = VideoReader(clip720)
    frames = [(f.pts, f.rgb) for f in reader]
    reader.close()
    stages["decode"] = time.perf_counter() - t0
    n = len(frames)
    with Engine(model, provider, BATCH, precision=precision) as engine:
        meta = engine.metadata
        t0 = time.perf_counter()
        preps = [imgs.prepare_image(Image.fromarray(rgb), meta) for _, rgb in frames]
        stages["resize to the model"] = time.perf_counter() - t0
        engine.run(np.stack([p.array for p in preps[:BATCH]]))  # warm-up
        t0 = time.perf_counter()
        ys = np.concatenate([engine.run(np.stack([p.array for p in preps[i:i + BATCH]]))
                             for i in range(0, n, BATCH)])
        stages["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = [np.asarray(imgs.to_image(y, p, meta)) for y, p in zip(ys, preps)]
    stages["resize back"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reader = VideoReader(clip720)
    writer = VideoWriter(tmp_path / "enc.mp4", ".mp4", reader, (1280, 720), "libx264")
    for (pts, _), rgb in zip(frames, outs):
        writer.write(rgb, pts)
    writer.finish()
    reader.close()
    stages["encode (libx264, audio remux)"] = time.perf_counter() - t0
    out = tmp_path / "out"
    cmd = [str(translate_exe()), str(clip720), "--model", str(model), "--output", str(out),
           "--provider", provider, "--precision", precision, "--batch-size", str(BATCH),
           "--overwrite", "--quiet"]
    runs = []
    benchmark.pedantic(lambda: runs.append(run_once(cmd, out)), rounds=2, warmup_rounds=0)
    e2e = max(r["rate"] for r in runs)
    ms = {k: round(1000 * v / n, 2) for k, v in stages.items()}
    total = sum(ms.values())
    benchmark.extra_info.update(ms_per_frame=ms, sum_of_stages_ms=round(total, 2),
                                frames_per_s=round(e2e, 2),
                                e2e_ms_per_frame=round(1000 / e2e, 2))
    print(f"\nvideo 720p {provider} {precision}: {e2e:.1f} frames/s end to end "
          f"({1000 / e2e:.1f} ms/frame); stages alone, ms/frame: "
          + ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in ms.items()))

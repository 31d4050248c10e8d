"""Generated video clips for the video tests and benchmarks (PyAV, no files in the repo).

    make_clip(path, frames=24, size=256, rate=24, audio=True)  # H.264 + AAC, moving pattern
    make_clip(path, vfr=[20, 50, 33, 100])                     # variable frame durations (ms)
    make_clip(path, codec="ffv1", repeat=4)                    # lossless; frame i == frame i+4
    make_clip(path, images=[rgb, ...])                         # these frames (H, W, 3) uint8
    make_clip(path, audio_seconds=3)                           # sound longer than the video
    decode(path) -> (frames (list of (H, W, 3) uint8), pts seconds (list of Fraction), info)
    audio_packets(path) -> [(pts, dts, bytes)] of the first audio stream
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pattern(i: int, w: int, h: int) -> np.ndarray:
    """A smooth moving colour pattern: frame ``i`` of a clip (what a camera pan looks like
    to an encoder, so H.264 at the default quality keeps it well)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 127 + 100 * np.sin((x + 4 * i) / 23.0)
    g = 127 + 100 * np.cos((y - 3 * i) / 31.0)
    b = 127 + 90 * np.sin((x + y + 5 * i) / 41.0)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def make_clip(path, frames: int = 24, size=256, rate: int = 24, audio: bool = True,
              vfr=None, codec: str = "libx264", repeat: int | None = None, images=None,
              faststart: bool = True, audio_seconds: float | None = None) -> Path:
    """Write a clip; ``size`` is an int (square) or (w, h); ``audio_seconds``: the sound's
    length (default: the video's). Returns ``path``."""
    path = Path(path)
    w, h = (size, size) if isinstance(size, int) else size
    options = {"movflags": "faststart"} if faststart and path.suffix in (".mp4", ".mov") else {}
    out = av.open(str(path), "w", options=options)
    v = out.add_stream(codec, rate=rate)
    v.width, v.height = w, h
    v.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
    if codec == "libx264":
        v.options = {"crf": "12"}
    tb = Fraction(1, 1000) if vfr else Fraction(1, rate)
    v.codec_context.time_base = tb
    a = None
    if audio:
        a = out.add_stream("aac", rate=44100)
        a.layout = "mono"
    t = 0
    n = len(images) if images is not None else frames
    for i in range(n):
        img = images[i] if images is not None else pattern(i % repeat if repeat else i, w, h)
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts, f.time_base = (t, tb) if vfr else (i, tb)
        t += vfr[i % len(vfr)] if vfr else 0
        for p in v.encode(f):
            out.mux(p)
    for p in v.encode():
        out.mux(p)
    if a is not None:
        sr, s = 44100, 0
        total = int(sr * (n / rate if audio_seconds is None else audio_seconds))
        while s < total:
            k = np.arange(s, s + 1024)
            data = (0.3 * np.sin(2 * np.pi * 440 * k / sr)).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(data, format="fltp", layout="mono")
            af.sample_rate, af.pts = sr, s
            for p in a.encode(af):
                out.mux(p)
            s += 1024
        for p in a.encode():
            out.mux(p)
    out.close()
    return path


def decode(path):
    """Every frame of the first video stream, its pts in seconds, and stream facts."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {"rate": s.average_rate, "frames": s.frames, "codec": s.codec_context.name,
                "size": (s.codec_context.width, s.codec_context.height),
                "pix_fmt": s.codec_context.pix_fmt, "audio": len(c.streams.audio)}
        frames, times = [], []
        for f in c.decode(s):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(f.pts * f.time_base)
    return frames, times, info


def audio_packets(path):
    """(pts seconds, duration seconds, payload) of each audio packet, in order."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        a = c.streams.audio[0]
        return [(p.pts * p.time_base, p.duration * p.time_base if p.duration else None,
                 bytes(p)) for p in c.demux(a) if p.size]

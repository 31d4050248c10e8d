"""Video out: the encoder of ``p2p-translate``'s video outputs (PyAV, the ``p2p[video]``
extra), split from ``p2p.runtime.video`` (the reader side, which it imports).

``pick_codec`` names and tries the encoder once, before any model work; ``VideoWriter``
encodes frames at their source pts and time base and copies the source's audio packets
unchanged, interleaved with the video as it goes (no re-encode, no audio track in memory).
"""

from __future__ import annotations

import functools
import io
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import DataError
from .video import ONE_THREAD_PIXELS, VideoReader, _ff, codec_threads, require_av

# Constant-quality defaults that do not visibly degrade frames: x264's "visually lossless"
# 18 (x264 docs / FFmpeg H.264 guide: 17-18), and the VP9/AV1 equivalents of the FFmpeg guides.
CRF_DEFAULT = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libvpx": 10, "libsvtav1": 28}
# x264's speed preset. veryfast, not x264's medium: on 1280x720 facades frames at CRF 18 it
# took 40 instead of 118 CPU ms a frame (more than the INT8 model's own time) for files of
# the same size and 0.6 dB less PSNR (39.9 vs 40.5 dB against the frames; measured side by
# side on the 2-core AMD EPYC Zen 4, BENCHMARKS.md).
X264_PRESET = "veryfast"
# Small frames (up to ONE_THREAD_PIXELS, a model's own size among them) get superfast: there
# the encoder's CPU time is taken from the model's, frame for frame (on 256x256 facades
# frames at CRF 18, one thread: 1.8 vs 2.8 CPU ms a frame, the INT8 model ~40), and
# superfast kept *more* of the frames (37.6 vs 35.3 dB against the same frames through
# yuv420p alone) for files 16% larger (772 vs 668 kB for 128 frames). At 1280x720 its files
# were 2.1x larger for 18% less CPU: veryfast stays there. Measured side by side on the
# 2-core AMD EPYC Zen 4 (BENCHMARKS.md, round 3, second session).
X264_PRESET_SMALL = "superfast"
# Lossless codecs store RGB as it is (no 4:2:0 chroma subsampling): bit-exact frames.
RGB_CODECS = {"ffv1": "bgr0", "png": "rgb24", "huffyuv": "rgb24", "libx264rgb": "rgb24"}
# FFmpeg's muxer of each video container p2p writes (the output keeps the input's).
CONTAINERS = {".mkv": "matroska", ".mov": "mov", ".mp4": "mp4", ".webm": "webm",
              ".avi": "avi"}
# JPEG codecs take full-range YUV only (FFmpeg refuses limited range without -strict).
JPEG_CODECS = frozenset({"mjpeg"})


def pick_codec(wanted: str, suffix: str, crf: int | None = None) -> str:
    """The encoder for an output of ``suffix``: ``wanted`` when it is one, else (auto) H.264
    (libx264 where this FFmpeg has it) and, for WebM, which cannot hold H.264, VP9. The
    encoder is opened once (64x64, the options the writer uses) so that one it cannot
    open for these frames, or a ``crf`` it has no setting for, is one DataError before
    any model work instead of a failure per video."""
    av = require_av()
    encoders = {n for n in av.codecs_available if _is_encoder(av, n)}
    if wanted != "auto":
        if wanted not in encoders:
            near = sorted(n for n in encoders if wanted.lower() in n.lower())[:8]
            raise DataError(f"--video-codec {wanted}: not a video encoder of this FFmpeg"
                            + (f" (similar: {', '.join(near)})" if near else ""))
        _try_encoder(wanted, suffix, crf)
        return wanted
    order = (("libvpx-vp9", "libvpx", "libsvtav1") if suffix == ".webm"
             else ("libx264", "h264", "mpeg4"))
    for name in order:
        if name in encoders:
            _try_encoder(name, suffix, crf)
            return name
    raise DataError(f"no encoder for {suffix} in this FFmpeg (tried {', '.join(order)})")


@functools.lru_cache(maxsize=None)
def _try_encoder(codec: str, suffix: str, crf: int | None) -> None:
    """Open ``codec`` at 64x64 with the writer's options; DataError in one line if not."""
    av = require_av()
    options = encoder_options(codec, suffix, 64, 64, crf)
    cc = av.CodecContext.create(codec, "w")
    cc.width = cc.height = 64
    cc.pix_fmt = _pix_fmt(codec, 64, 64)
    cc.time_base = Fraction(1, 25)
    cc.framerate = Fraction(25)
    cc.options = options
    try:
        cc.open()
    except av.error.FFmpegError as e:
        raise DataError(f"--video-codec {codec}: cannot encode RGB frames "
                        f"({cc.pix_fmt}): {_ff(e)}") from None
    # ... and the container must take it (WebM holds VP8/VP9/AV1 only): its header is
    # written once into memory, so a mismatch is one line too, not a failure per video.
    out = av.open(io.BytesIO(), "w", format=CONTAINERS[suffix])
    try:
        stream = out.add_stream(codec, rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = cc.pix_fmt
        stream.options = options  # x265's quiet logging too
        out.start_encoding()
    except (av.error.FFmpegError, ValueError) as e:
        raise DataError(f"--video-codec {codec}: cannot go into {suffix} files: "
                        f"{_ff(e)}") from None
    finally:
        try:
            out.close()
        except Exception:  # noqa: BLE001 - an in-memory header that was never finished
            pass


def encoder_options(codec: str, suffix: str, w: int, h: int, crf: int | None) -> dict:
    """The FFmpeg options of ``codec`` for ``w`` x ``h`` frames into ``suffix``: threads,
    constant quality (``crf`` None: ``CRF_DEFAULT``), x264's preset (``X264_PRESET_SMALL``
    for frames up to ``ONE_THREAD_PIXELS``, else ``X264_PRESET``), x265's own logging
    off (it prints ~25 info lines to stderr itself, past FFmpeg's log level). Raises
    DataError for a ``crf`` the codec has no setting for."""
    options = {"threads": str(codec_threads(w, h))}
    if codec in CRF_DEFAULT:
        options["crf"] = str(CRF_DEFAULT[codec] if crf is None else crf)
        if codec.startswith("libvpx"):
            options["b"] = "0"  # constant quality, no bit-rate cap
    elif crf is not None:
        raise DataError(f"--crf: {codec} has no constant-quality setting "
                        f"(those that do: {', '.join(CRF_DEFAULT)})")
    if codec in ("libx264", "libx264rgb"):
        options["preset"] = X264_PRESET_SMALL if w * h <= ONE_THREAD_PIXELS else X264_PRESET
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    if suffix == ".avi":
        options["bf"] = "0"  # AVI stores decode order only: B-frames garble the pts
    return options


def _is_encoder(av, name: str) -> bool:
    try:
        return av.codec.Codec(name, "w").type == "video"
    except Exception:  # noqa: BLE001 - a decoder-only name
        return False


class VideoWriter:
    """Encode frames to ``tmp`` (a staged temp path; the container comes from ``suffix``)
    with ``codec`` at ``size`` (width, height), each at its source pts in ``reader``'s time
    base, and copy the source's audio packets as they are. ``crf`` None: ``CRF_DEFAULT``.
    Raises DataError (without a file name: the caller names the input) for a codec,
    container, size or ``crf`` this FFmpeg refuses."""

    def __init__(self, tmp: Path, suffix: str, reader: VideoReader, size: tuple[int, int],
                 codec: str, crf: int | None = None, comment: str | None = None):
        av = require_av()
        self.reader, self.tb = reader, reader.time_base
        fmt = CONTAINERS[suffix]
        self._out = av.open(str(tmp), "w", format=fmt)
        if comment:  # the container's comment tag: p2p-translate's provenance record
            self._out.metadata["comment"] = comment
        self._src = None
        try:
            self._v = self._out.add_stream(codec, rate=reader.rate)
            w, h = size
            self._v.width, self._v.height = w, h
            self._v.pix_fmt = self.pix_fmt = _pix_fmt(codec, w, h)
            self._v.time_base = self.tb
            self._v.codec_context.time_base = self.tb
            sar = reader.sar  # anamorphic pixels display as the input's (a turned frame's
            if sar and (w, h) != (reader.width, reader.height):  # aspect is the other way)
                sar = 1 / sar
            if sar:
                self._v.codec_context.sample_aspect_ratio = sar
                self._v.sample_aspect_ratio = sar  # the container's own field (MP4 pasp)
            self._v.options = encoder_options(codec, suffix, w, h, crf)
            self._audio = {}
            if reader.has_audio:  # (animations have none)
                # A second handle on the source: its audio packets are muxed as the video
                # reaches their time, so neither stream is read ahead in memory.
                self._src = av.open(str(reader.path))
                for a in self._src.streams.audio:
                    self._audio[a.index] = self._out.add_stream_from_template(a)
                self._packets = self._src.demux(*self._src.streams.audio)
                self._pending = None
        except av.error.FFmpegError as e:
            self.close(abort=True)
            raise DataError(f"cannot encode {codec} at {size[0]}x{size[1]}: {_ff(e)}"
                            ) from None  # the sink names the input in front
        except Exception:
            self.close(abort=True)
            raise
        self.written = 0

    def write(self, rgb: np.ndarray, pts: int) -> None:
        av = require_av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = pts, self.tb
        self._audio_until(pts * self.tb)
        for packet in self._v.encode(frame):
            self._out.mux(packet)
        self.written += 1

    def _audio_until(self, t) -> None:
        """Mux the source's audio packets that start before ``t`` seconds (None: all)."""
        if not self._audio:
            return
        av = require_av()
        while True:
            p = self._pending
            if p is None:
                try:
                    p = next(self._packets)
                except (StopIteration, av.error.FFmpegError):  # a truncated file ends here
                    self._audio = {}
                    return
                if p.dts is None and p.pts is None:  # the demuxer's end-of-stream flush
                    continue
            at = (p.pts if p.pts is not None else p.dts) * p.time_base
            if t is not None and at >= t:
                self._pending = p
                return
            self._pending = None
            p.stream = self._audio[p.stream.index]
            self._out.mux(p)

    def finish(self) -> None:
        """Flush the encoder, the rest of the audio, the container."""
        for packet in self._v.encode():
            self._out.mux(packet)
        self._audio_until(None)
        self.close()

    def close(self, abort: bool = False) -> None:
        for c in (self._src, self._out):
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - closing a half-written file on failure
                    if not abort:
                        raise
        self._src = self._out = None


def _pix_fmt(codec: str, w: int, h: int) -> str:
    """yuv420p (what every player plays); 4:4:4 where a side is odd (4:2:0 needs even
    sides); RGB for lossless codecs."""
    if codec in RGB_CODECS:
        return RGB_CODECS[codec]
    fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
    return fmt.replace("yuv", "yuvj") if codec in JPEG_CODECS else fmt

"""Video in and out: frames with their timestamps from a file, and a file back from frames.

PyAV (FFmpeg, the ``p2p[video]`` extra) decodes and encodes ``.mp4 .mov .mkv .webm .avi``;
Pillow, the image decoder of every command, decodes animated GIF and WebP (FFmpeg's webp
decoder reads stills only, and Pillow composites GIF transparency exactly as a still GIF's).
``av`` is imported inside the functions that need it, so ``p2p.runtime`` imports without it; its
absence is an ImportError naming ``av`` that ``p2p.cli.common`` turns into one line naming
the extra.

``VideoReader`` yields ``Frame`` (RGB uint8 (H, W, 3), pts in the stream's time base) and
keeps, for frames it could not decode, their pts, so that ``problems()`` can name each by its
index in presentation order. ``VideoWriter`` encodes frames at the same pts and time base
(so the frame rate, frame count and timestamps, variable ones too, come back as they were)
and copies the audio packets of the source unchanged, interleaved with the video as it goes
(no re-encode, and no whole audio track held in memory).
"""

from __future__ import annotations

import os
import re
from array import array
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import DataError, ImageError, one_line
from .images import check_regular_file, to_rgb

VIDEO_EXTS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"})
ANIMATION_EXTS = frozenset({".gif", ".webp"})  # video when animated, an image otherwise
ANIMATION_OUTPUT = ".mp4"  # an animation's translation is an H.264 video (GIF has 256 colours)
# Constant-quality defaults that do not visibly degrade frames: x264's "visually lossless"
# 18 (x264 docs / FFmpeg H.264 guide: 17-18), and the VP9/AV1 equivalents of the FFmpeg guides.
CRF_DEFAULT = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libvpx": 10, "libsvtav1": 28}
# x264's speed preset. veryfast, not x264's medium: on 1280x720 facades frames at CRF 18 it
# took 40 instead of 118 CPU ms a frame (more than the INT8 model's own time) for files of
# the same size and 0.6 dB less PSNR (39.9 vs 40.5 dB against the frames; measured side by
# side on the 2-core AMD EPYC Zen 4, BENCHMARKS.md).
X264_PRESET = "veryfast"
# Lossless codecs store RGB as it is (no 4:2:0 chroma subsampling): bit-exact frames.
RGB_CODECS = {"ffv1": "bgr0", "png": "rgb24", "huffyuv": "rgb24", "libx264rgb": "rgb24"}


def _ff(e: BaseException) -> str:
    """An FFmpeg error as one line without PyAV's "[Errno 1094995529] " prefix."""
    return re.sub(r"^\[Errno -?\d+\] ", "", one_line(e))


def is_video_name(name) -> bool:
    """A container name p2p decodes as video (not hidden: p2p's own temp files are)."""
    name = Path(name).name
    return not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTS


def is_animation(path) -> bool:
    """A .gif/.webp file with more than one frame (Pillow reads the header only); anything
    unreadable is not, and the image decoder then names what is wrong with it."""
    if Path(path).suffix.lower() not in ANIMATION_EXTS:
        return False
    from PIL import Image
    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001 - decided by the decoder later
        return False


def output_suffix(src: Path) -> str:
    """The container of a video's translation: the input's own (its audio codec fits it),
    MP4 for an animation."""
    s = src.suffix.lower()
    return s if s in VIDEO_EXTS else ANIMATION_OUTPUT


def require_av():
    """``av``, or ImportError(name='av') (cli: "needs av ... pip install 'p2p[video]'")."""
    import av

    return av


def pick_codec(wanted: str, suffix: str) -> str:
    """The encoder for an output of ``suffix``: ``wanted`` when it is one, else (auto) H.264
    (libx264 where this FFmpeg has it) and, for WebM, which cannot hold H.264, VP9."""
    av = require_av()
    encoders = {n for n in av.codecs_available if _is_encoder(av, n)}
    if wanted != "auto":
        if wanted not in encoders:
            near = sorted(n for n in encoders if wanted.lower() in n.lower())[:8]
            raise DataError(f"--video-codec {wanted}: not a video encoder of this FFmpeg"
                            + (f" (similar: {', '.join(near)})" if near else ""))
        return wanted
    order = (("libvpx-vp9", "libvpx", "libsvtav1") if suffix == ".webm"
             else ("libx264", "h264", "mpeg4"))
    for name in order:
        if name in encoders:
            return name
    raise DataError(f"no encoder for {suffix} in this FFmpeg (tried {', '.join(order)})")


def _is_encoder(av, name: str) -> bool:
    try:
        return av.codec.Codec(name, "w").type == "video"
    except Exception:  # noqa: BLE001 - a decoder-only name
        return False


@dataclass(frozen=True)
class Frame:
    pts: int  # in the reader's time_base
    rgb: np.ndarray  # (H, W, 3) uint8


@dataclass
class VideoReader:
    """The first video stream of ``path``: ``width``, ``height``, ``time_base`` (Fraction,
    seconds per pts tick), ``rate`` (frames/s), ``frames`` (the count the container states,
    0 when unknown), ``has_audio``; iterate for ``Frame``s in presentation order. Raises
    ImageError naming the file when it is not a video that can be opened."""

    path: Path
    width: int = 0
    height: int = 0
    time_base: Fraction = Fraction(1, 1000)
    rate: Fraction = Fraction(25)
    frames: int = 0
    has_audio: bool = False
    failed: list[tuple[int | None, str]] = field(default_factory=list)  # (pts, reason)
    # pts of the frames yielded: 8 bytes a frame (a 10-hour 60 frame/s video: 17 MB), kept
    # so that a bad frame's index counts the frames decoded after it but shown before it.
    decoded: array = field(default_factory=lambda: array("q"))

    def __post_init__(self):
        self.path = Path(self.path)
        check_regular_file(self.path)
        self._pil = self.path.suffix.lower() in ANIMATION_EXTS
        if self._pil:
            self._open_animation()
        else:
            self._open_av()

    def _open_av(self) -> None:
        av = require_av()
        try:
            self._c = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise ImageError(f"{self.path}: not a video FFmpeg can read: {_ff(e)}") from None
        if not self._c.streams.video:
            self._c.close()
            raise ImageError(f"{self.path}: has no video stream")
        s = self._stream = self._c.streams.video[0]
        # Slice threads only: frame threads hold frames back and lose a bad packet's error
        # (and the frames after it) at the end of a truncated file.
        s.thread_type = "SLICE"
        self.width, self.height = s.codec_context.width, s.codec_context.height
        s.codec_context.thread_count = codec_threads(self.width, self.height)
        self.time_base = s.time_base or Fraction(1, 1000)
        self.rate = s.average_rate or s.guessed_rate or Fraction(25)
        self.frames = s.frames or (int(s.duration * self.time_base * self.rate)
                                   if s.duration else 0)
        self.has_audio = bool(self._c.streams.audio)
        self._index_counts = "mp4" in self._c.format.name
        # What the container says the whole file lasts (seconds; 0 unknown): a file cut
        # short keeps it (Matroska, WebM), so frames that end well before it are said.
        self.declared = float(self._c.duration / 1e6) if self._c.duration else 0.0

    def _open_animation(self) -> None:
        from PIL import Image
        try:
            self._im = Image.open(self.path)
            self.width, self.height = self._im.size
            self.frames = getattr(self._im, "n_frames", 1)
        except Exception as e:  # noqa: BLE001 - whatever the plug-in raises on a bad file
            raise ImageError(f"{self.path}: cannot decode: {_ff(e)}") from None
        total = 0
        for i in range(self.frames):  # header walk only: each frame's duration in ms
            self._im.seek(i)
            total += self._im.info.get("duration", 100) or 100
        self.rate = Fraction(self.frames * 1000, total).limit_denominator(1001)
        self._index_counts = True

    def __iter__(self):
        yield from (self._frames_animation() if self._pil else self._frames_av())

    def _frames_av(self):
        av = require_av()
        last = None
        packets = self._c.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as e:  # the container itself breaks off here
                self.failed.append((None, f"the file cannot be read past here: {_ff(e)}"))
                break
            try:
                got = packet.decode()
            except av.error.FFmpegError as e:
                if packet.pts is not None or packet.size:
                    self.failed.append((packet.pts, _ff(e)))
                continue
            for f in got:
                pts = f.pts if f.pts is not None else (0 if last is None else last + 1)
                if last is not None and pts <= last:
                    pts = last + 1  # an encoder refuses non-increasing pts
                last = pts
                self.decoded.append(pts)
                rgb = f.to_ndarray(format="rgb24")
                turn = round((f.rotation or 0) / 90) % 4
                if turn:  # a phone's display matrix: upright, as images follow EXIF
                    rgb = np.ascontiguousarray(np.rot90(rgb, turn))
                yield Frame(pts, rgb)

    def _frames_animation(self):
        t = 0
        for i in range(self.frames):
            try:
                self._im.seek(i)
                rgb = np.asarray(to_rgb(self._im.convert("RGBA")))
            except Exception as e:  # noqa: BLE001
                self.failed.append((t, one_line(e)))
            else:
                self.decoded.append(t)
                yield Frame(t, rgb)
            t += self._im.info.get("duration", 100) or 100

    def problems(self) -> list[str]:
        """After iterating: one line per frame that could not be decoded, by its index in
        presentation order (its rank among every pts seen), and the frames the container
        states but that never came (a truncated file)."""
        lines = []
        good = np.frombuffer(self.decoded, np.int64) if len(self.decoded) else np.zeros(0, int)
        bad = [p for p, _ in self.failed if p is not None]
        seen = len(good) + len(bad)
        for pts, why in self.failed:
            if pts is None:
                lines.append(f"{self.path}: after frame {seen - 1}: {why}")
            else:
                index = int(np.count_nonzero(good < pts)) + sum(b < pts for b in bad)
                at = float(pts * self.time_base)
                lines.append(f"{self.path}: frame {index} (at {at:.3f} s) cannot be "
                             f"decoded: {why}")
        # Only an MP4/MOV index states the count exactly (AVI's header counts empty chunks).
        if self.frames > seen and self._index_counts:
            lines.append(f"{self.path}: {self.frames - seen} of the {self.frames} frames its "
                         "index lists are missing: the file ends early (truncated?)")
        return lines

    def ends_early(self) -> str | None:
        """After iterating: a note when the frames end well before the duration the
        container declares (more than two frames and 0.1 s short: audio may outlast the
        video by a little), else None. A note, not a failure: a container's duration can
        cover a longer audio track."""
        declared = getattr(self, "declared", 0.0)
        if not declared or not len(self.decoded):
            return None
        step = float(1 / self.rate) if self.rate else 0.04
        end = float(max(self.decoded) * self.time_base) + step
        if end < declared - max(2 * step, 0.1):
            return (f"note: the frames end at {end:.3f} s of the {declared:.3f} s the "
                    "container declares (a truncated file, or a longer audio track?)")
        return None

    def close(self) -> None:
        for name in ("_c", "_im"):
            if getattr(self, name, None) is not None:
                getattr(self, name).close()
                setattr(self, name, None)


class VideoWriter:
    """Encode frames to ``tmp`` (a staged temp path; the container comes from ``suffix``)
    with ``codec`` at ``size`` (width, height), each at its source pts in ``reader``'s time
    base, and copy the source's audio packets as they are. ``crf`` None: ``CRF_DEFAULT``.
    Raises DataError (without a file name: the caller names the input) for a codec,
    container, size or ``crf`` this FFmpeg refuses."""

    def __init__(self, tmp: Path, suffix: str, reader: VideoReader, size: tuple[int, int],
                 codec: str, crf: int | None = None):
        av = require_av()
        self.reader, self.tb = reader, reader.time_base
        fmt = {".mkv": "matroska", ".mov": "mov", ".mp4": "mp4", ".webm": "webm",
               ".avi": "avi"}[suffix]
        self._out = av.open(str(tmp), "w", format=fmt)
        self._src = None
        try:
            self._v = self._out.add_stream(codec, rate=reader.rate)
            w, h = size
            self._v.width, self._v.height = w, h
            self._v.pix_fmt = self.pix_fmt = _pix_fmt(codec, w, h)
            self._v.time_base = self.tb
            self._v.codec_context.time_base = self.tb
            options = {"threads": str(codec_threads(w, h))}
            if codec in CRF_DEFAULT:
                options["crf"] = str(CRF_DEFAULT[codec] if crf is None else crf)
                if codec.startswith("libvpx"):
                    options["b"] = "0"  # constant quality, no bit-rate cap
            elif crf is not None:
                raise DataError(f"--crf: {codec} has no constant-quality setting "
                                f"(those that do: {', '.join(CRF_DEFAULT)})")
            if codec in ("libx264", "libx264rgb"):
                options["preset"] = X264_PRESET
            if suffix == ".avi":
                options["bf"] = "0"  # AVI stores decode order only: B-frames garble the pts
            self._v.options = options
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


# Frames up to this many pixels are decoded and encoded on one thread each. The model
# already keeps every core busy, so a codec's own threads only add their hand-offs (x264 veryfast, CRF 18, on
# 256x256 facades frames: 2.9 vs 3.3 CPU ms a frame with 2 threads) while one thread keeps
# up easily (~3 ms a frame against the INT8 model's ~20 ms of wall time a frame on two
# cores); at 1280x720 one thread (~28 ms a frame) would fall behind the model, so larger
# frames get a thread a core. Measured on the 2-core AMD EPYC Zen 4, BENCHMARKS.md.
ONE_THREAD_PIXELS = 640 * 480


def codec_threads(w: int, h: int) -> int:
    """A decoder's or encoder's thread count for frames of ``w`` x ``h``
    (``ONE_THREAD_PIXELS``)."""
    return 1 if w * h <= ONE_THREAD_PIXELS else (os.cpu_count() or 1)


def _pix_fmt(codec: str, w: int, h: int) -> str:
    """yuv420p (what every player plays); 4:4:4 where a side is odd (4:2:0 needs even
    sides); RGB for lossless codecs."""
    if codec in RGB_CODECS:
        return RGB_CODECS[codec]
    return "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"

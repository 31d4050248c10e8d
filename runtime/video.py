"""Video in and out: frames with their timestamps from a file, and a file back from frames.

PyAV (FFmpeg, the ``p2p[video]`` extra) decodes and encodes ``.mp4 .mov .mkv .webm .avi``;
Pillow, the image decoder of every command, decodes animated GIF, WebP and PNG (FFmpeg's webp
decoder reads stills only, and Pillow composites GIF transparency exactly as a still GIF's).
``av`` is imported inside the functions that need it, so ``p2p.runtime`` imports without it; its
absence is an ImportError naming ``av`` that ``p2p.cli.common`` turns into one line naming
the extra.

``VideoReader`` yields ``Frame`` (RGB uint8 (H, W, 3), pts in the stream's time base) and
keeps, for frames it could not decode, their pts, so that ``problems()`` can name each by its
index in presentation order. ``VideoWriter`` (``p2p.runtime.videoenc``, the encoder side,
which imports this module) encodes frames at the same pts and time base (so the frame rate, frame count and
timestamps, variable ones too, come back as they were) and copies the audio packets of the
source unchanged, interleaved with the video as it goes (no re-encode, and no whole audio
track held in memory).
"""

from __future__ import annotations

import os
import re
from array import array
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import ImageError, one_line
from .images import check_regular_file, to_rgb
from .videofacts import cut_short, upright

VIDEO_EXTS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"})
# Video when animated (APNG: a .png of several frames), an image otherwise.
ANIMATION_EXTS = frozenset({".gif", ".webp", ".png"})
ANIMATION_OUTPUT = ".mp4"  # an animation's translation is an H.264 video (GIF has 256 colours)


def _ff(e: BaseException) -> str:
    """An FFmpeg error as one line without PyAV's "[Errno 1094995529] " prefix."""
    return re.sub(r"^\[Errno -?\d+\] ", "", one_line(e))


def is_video_name(name) -> bool:
    """A container name p2p decodes as video (not hidden: p2p's own temp files are)."""
    name = Path(name).name
    return not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTS


def is_animation(path) -> bool:
    """A .gif/.webp/.png (APNG) file with more than one frame (Pillow reads the headers
    only). One whose header says animated but whose frames cannot all be counted (a file
    cut short) is one too: ``VideoReader`` keeps its frames and names where they end,
    rather than a still of its first frame passing as the whole file. Anything else
    unreadable is not, and the image decoder then names what is wrong with it."""
    if Path(path).suffix.lower() not in ANIMATION_EXTS:
        return False
    try:  # a FIFO or device named *.png would block Image.open: the decoder names it
        if not Path(path).is_file():
            return False
    except OSError:
        return False
    from PIL import Image
    try:
        with Image.open(path) as im:
            if not getattr(im, "is_animated", False):
                return False
            try:
                return im.n_frames > 1
            except Exception:  # noqa: BLE001 - animated, frames cut short
                return True
    except Exception:  # noqa: BLE001 - decided by the decoder later
        return False


def partial_name(dst: Path) -> Path:
    """Where a video with frames missing is published (``clip.partial.mp4`` for
    ``clip.mp4``): never under the finished name, so a rerun does not skip it as done."""
    dst = Path(dst)
    return dst.with_name(f"{dst.stem}.partial{dst.suffix}")


def output_suffix(src: Path) -> str:
    """The container of a video's translation: the input's own (its audio codec fits it),
    MP4 for an animation."""
    s = src.suffix.lower()
    return s if s in VIDEO_EXTS else ANIMATION_OUTPUT


def require_av():
    """``av``, or ImportError(name='av') (cli: "needs av ... pip install 'p2p[video]'")."""
    import av

    return av


def _hms(text: str) -> float:
    """Seconds of a Matroska DURATION tag ("00:00:01.600000000"); 0.0 when not one."""
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", text.strip())
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else 0.0


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
    sar: Fraction | None = None  # the stored pixels' aspect (non-square: anamorphic video)
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
        sar = s.sample_aspect_ratio or s.codec_context.sample_aspect_ratio
        self.sar = Fraction(sar) if sar and sar != 1 else None
        self._index_counts = "mp4" in self._c.format.name
        # What the container says the whole file lasts (seconds; 0 unknown): a file cut
        # short keeps it (Matroska, WebM), so frames that end well before it are said.
        self.declared = float(self._c.duration / 1e6) if self._c.duration else 0.0
        # What the video stream itself says it lasts (0 unknown): MP4's track duration,
        # Matroska's per-track DURATION tag. Frames that end well before it are missing
        # whatever the audio does.
        self.stream_declared = (float(s.duration * s.time_base) if s.duration
                                else _hms(s.metadata.get("DURATION", "")))

    def _open_animation(self) -> None:
        from PIL import Image
        try:
            self._im = Image.open(self.path)
            self.width, self.height = self._im.size
        except Exception as e:  # noqa: BLE001 - whatever the plug-in raises on a bad file
            raise ImageError(f"{self.path}: cannot decode: {_ff(e)}") from None
        # A header walk, frame by frame (each frame's duration in ms), not ``n_frames``:
        # a file cut short raises there, and its frames up to the cut are still kept.
        durations: list[int] = []
        while True:
            try:
                self._im.seek(len(durations))
            except EOFError:
                break
            except Exception as e:  # noqa: BLE001 - the file breaks off here
                self.failed.append((None, f"the file cannot be read past here: {_ff(e)}"))
                break
            if self._im.format == "WEBP":  # its plug-in reads a frame's duration on load
                try:
                    self._im.load()
                except Exception as e:  # noqa: BLE001 - the file breaks off here
                    self.failed.append((None, f"the file cannot be read past here: {_ff(e)}"))
                    break
            # ms; APNG gives a float (its delay is a fraction): pts are whole ms
            durations.append(round(self._im.info.get("duration", 100) or 100) or 1)
        if durations and not self.failed and (why := cut_short(self.path, self._im.format)):
            self.failed.append((None, why))  # whole frames up to a cut: no error above
        if not durations:
            raise ImageError(f"{self.path}: cannot decode: {self.failed[-1][1]}")
        self.frames = len(durations)
        self._durations = durations
        self.rate = Fraction(self.frames * 1000, sum(durations)).limit_denominator(1001)
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
                self._last_duration = getattr(f, "duration", None) or 0  # ticks; 0 unknown
                self.decoded.append(pts)
                yield Frame(pts, upright(f.to_ndarray(format="rgb24"), f))

    def _frames_animation(self):
        t = 0
        for i, duration in enumerate(self._durations):
            try:
                self._im.seek(i)
                rgb = np.asarray(to_rgb(self._im.convert("RGBA")))
            except Exception as e:  # noqa: BLE001
                self.failed.append((t, one_line(e)))
            else:
                self.decoded.append(t)
                yield Frame(t, rgb)
            t += duration

    def problems(self) -> list[str]:
        """After iterating: one line per frame that could not be decoded, by its index in
        presentation order (its rank among every pts seen), and the frames the container
        states but that never came (a truncated file)."""
        lines = []
        good = np.frombuffer(self.decoded, np.int64) if len(self.decoded) else np.zeros(0, int)
        bad = [p for p, _ in self.failed if p is not None]
        seen = len(good) + len(bad)
        # Frames in presentation order (a decoder reports them in decode order: 8, 7, 9),
        # then what ended the file.
        for pts, why in sorted(self.failed, key=lambda f: (f[0] is None, f[0] or 0)):
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
        elif (missing := self.frames_missing()) is not None:
            lines.append(missing)
        return lines

    def _short(self) -> tuple[float, float, str] | None:
        """After iterating: (where the frames end, the duration they fall short of, whose),
        when they end more than two frames and 0.1 s before a declared duration (audio may
        outlast the video by a little), else None."""
        if not len(self.decoded):
            return None
        step = float(1 / self.rate) if self.rate else 0.04
        # The last frame lasts its own duration where the container states it (a variable
        # rate's last frame may be shown for seconds), else one frame at the average rate.
        last = getattr(self, "_last_duration", 0)
        end = float(max(self.decoded) * self.time_base) + (
            float(last * self.time_base) if last else step)
        for declared, whose in ((getattr(self, "stream_declared", 0.0), "video stream"),
                                (getattr(self, "declared", 0.0), "container")):
            if declared and end < declared - max(2 * step, 0.1):
                return end, declared, whose
        return None

    def frames_missing(self) -> str | None:
        """After iterating: a failure line when the frames end early and nothing but missing
        frames explains it (the video stream's own duration says so, or the file has no
        audio track that the container's duration could cover), else None."""
        short = self._short()
        if short is None or (short[2] == "container" and self.has_audio):
            return None
        end, declared, whose = short
        return (f"{self.path}: the frames end at {end:.3f} s of the {declared:.3f} s the "
                f"{whose} declares{'' if self.has_audio else ' (no audio track)'}: the "
                "rest are missing (a truncated or damaged file)")

    def ends_early(self) -> str | None:
        """After iterating: a note when the frames end well before the duration only the
        container declares and the file has an audio track: that duration can be the
        audio's, so a note, not a failure (``frames_missing`` covers the rest)."""
        short = self._short()
        if short is None or short[2] != "container" or not self.has_audio:
            return None
        return (f"note: the frames end at {short[0]:.3f} s of the {short[1]:.3f} s the "
                "container declares (a longer audio track, or a truncated file?)")

    def close(self) -> None:
        for name in ("_c", "_im"):
            if getattr(self, name, None) is not None:
                getattr(self, name).close()
                setattr(self, name, None)


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


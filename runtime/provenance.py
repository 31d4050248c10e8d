"""Which inputs and what made an output: a one-line record that p2p-translate and
p2p-process write into every image or video they make (a PNG ``tEXt`` chunk, a JPEG
comment, WebP XMP, the TIFF ImageDescription, a video's ``comment`` tag), so that a later
run skips an existing output only when it made it itself (an interrupted run resuming) and
refuses, in one line, one that another input or another maker made (a second folder with
the same names into one output folder, a retrained model, other p2p-process settings):
such a skip would pass an old result off as this run's.

    record = for_output((src,), maker)   # maker: model_id(meta, path), or operation_id(...)
    record.text()             # 'p2p-provenance/1 source=9f2c... by=41ab...'
    read(dst)                 # the Record in an output file, or None (none written: an
                              # output of p2p before this record, or someone else's file)
    made_elsewhere(dst, (src,), maker, "model")   # why dst is not this run's, or None

Identities are short SHA-256 digests: an input by its size and its first and last 1 MiB
(cheap for a 4 GB video, and any edit that changes the size or either end is seen; several
inputs, such as p2p-process combine's A and B, by their ids in order), a model by its
source checkpoint's SHA-256 from the metadata (so the FP32, FP16 and INT8 exports of one
checkpoint share it: a run resumed at another precision keeps its outputs), or by the file
itself when the metadata has none; a p2p-process operation by its name and settings.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

KEY = "p2p-provenance"  # the PNG tEXt keyword; the record's text starts with it too
VERSION = 1
_EDGE = 1 << 20  # bytes hashed at each end of an input
_XMP_NS = "https://github.com/p2p/provenance/1.0/"
_TEXT = re.compile(rf"{KEY}/(\d+) source=([0-9a-f]+) by=([0-9a-f]+)")


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_id(path) -> str:
    """16 hex digits: SHA-256 over the file's size and its first and last 1 MiB. OSError
    when it cannot be read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_EDGE)
        tail = b""
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            tail = f.read(_EDGE)
    return _digest(size, head, tail)


def source_id(sources) -> str:
    """``file_id`` of one input; of several, a digest of their ids in order. OSError when
    one cannot be read."""
    ids = [file_id(p) for p in sources]
    return ids[0] if len(ids) == 1 else _digest(*ids)


def model_id(meta, model_path) -> str:
    """16 hex digits naming the weights: the metadata's ``checkpoint_sha256`` (shared by a
    checkpoint's FP32/FP16/INT8 exports), else ``file_id`` of the model file."""
    sha = getattr(meta, "checkpoint_sha256", "") or ""
    return sha[:16].lower() if sha else file_id(model_path)


def operation_id(*settings) -> str:
    """16 hex digits naming a p2p-process operation and the settings that change its
    pixels (``operation_id('resize', 256, False, 'auto')``)."""
    return _digest("p2p-process", *settings)


@dataclass(frozen=True)
class Record:
    source: str  # source_id of the input(s)
    by: str  # model_id or operation_id of what made the output

    def text(self) -> str:
        return f"{KEY}/{VERSION} source={self.source} by={self.by}"

    def xmp(self) -> bytes:
        """A minimal XMP packet carrying ``text()`` (WebP's metadata chunk holds XMP)."""
        return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
                f'"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
                f'xmlns:p2p="{_XMP_NS}" p2p:provenance="{self.text()}"/></rdf:RDF>'
                f'</x:xmpmeta>').encode()

    @classmethod
    def parse(cls, text) -> "Record | None":
        """The record in ``text`` (str or bytes, anywhere in it), or None."""
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        m = _TEXT.search(text or "")
        return cls(m.group(2), m.group(3)) if m else None


def for_output(sources, by: str | None) -> Record | None:
    """The record for an output of ``sources`` (paths) made by ``by`` (``model_id`` or
    ``operation_id``), or None: no maker given (a caller that keeps no record), or an
    input unreadable now."""
    if not by:
        return None
    try:
        return Record(source_id(sources), by)
    except OSError:
        return None


def made_elsewhere(dst, sources, by: str, maker: str = "model") -> str | None:
    """Why the existing output ``dst`` is not what this run would make of ``sources`` with
    ``by`` (``maker`` names its kind in the reason: "model", "operation"): another maker,
    or other inputs (two folders with the same names into one output folder; an input
    edited since). None when its record matches, or when it has none (an earlier p2p's
    output, kept as done as it always was)."""
    rec = read(dst)
    if rec is None:
        return None
    if rec.by != by:
        what = "weights" if maker == "model" else "settings"
        return (f"made by another {maker} ({what} {rec.by[:8]}, this run's {by[:8]})")
    try:
        source = source_id(sources)
    except OSError:  # unreadable now: the run's decoder says so if it ever reads it
        return None
    if rec.source != source:
        if len(sources) == 1:
            return f"made from another input than {sources[0]} (or from an earlier version of it)"
        names = " and ".join(map(str, sources))
        return f"made from other inputs than {names} (or from earlier versions of them)"
    return None


def _texts(dst: Path):
    """The metadata strings of an output file where p2p puts its record."""
    suffix = dst.suffix.lower()
    if suffix in (".tif", ".tiff"):
        try:
            import tifffile
        except ImportError:
            tifffile = None
        if tifffile is not None:
            with tifffile.TiffFile(dst) as t:
                return [p.description for p in t.pages[:1]] + \
                    [str(v.value) for v in t.pages[0].tags.values() if v.code == 42112]
    from . import video

    if video.is_video_name(dst):
        import av

        with av.open(str(dst)) as c:  # "comment" (MP4, MOV, AVI) or "COMMENT" (Matroska)
            return [v for k, v in c.metadata.items() if k.lower() == "comment"]
    from PIL import Image

    with Image.open(dst) as im:
        info = dict(im.info)
        texts = [info.get(KEY, ""), info.get("comment", b""), info.get("xmp", b"")]
        tags = getattr(im, "tag_v2", None)
        if tags is not None:
            texts += [tags.get(270, ""), tags.get(42112, "")]
        return texts


def read(dst) -> Record | None:
    """The Record written into an output file, or None when it has none (or cannot be
    read as the format its name says: whether to skip it is the caller's rule)."""
    try:
        for text in _texts(Path(dst)):
            rec = Record.parse(text)
            if rec is not None:
                return rec
    except Exception:  # noqa: BLE001 - an unreadable or foreign file carries no record
        return None
    return None

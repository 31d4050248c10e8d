"""Which inputs, what and how made an output: a one-line record that p2p-translate and
p2p-process write into every image or video they make (a PNG ``tEXt`` chunk, a JPEG
comment, WebP XMP, the TIFF ImageDescription, a video's ``comment`` tag), so that a later
run skips an existing output only when it would have made it itself (an interrupted run
resuming) and refuses, in one line, one that another input, another model or other
settings made (a second folder with the same names into one output folder, a retrained
model, ``--split right`` after ``--split left``): such a skip would pass an old result off
as this run's.

    maker = Maker("translate", model_id(meta, path), settings(split="right", size="input"),
                  "model", "generator.onnx")
    maker.record(sources).text()   # 'p2p-provenance/1 tool=translate source=9f2c... by=41ab...
                                   #  settings=split=right,size=input'
    read(dst)                      # the Record in an output file, or None (none written: an
                                   # output of p2p before this record, or someone else's file)
    maker.made_elsewhere(dst, sources)   # why dst is not this run's, or None

Identities are short SHA-256 digests (16 hex digits). An input: the whole file up to
``WHOLE`` bytes; above that (videos, large rasters) its size, first and last 1 MiB and 64
blocks of 64 KiB spread over it, so that reading a 4 GB video costs 6 MiB (an edit that
touches none of those blocks is not seen). Several inputs (p2p-process combine's A and B):
their ids in order. A model: its source checkpoint's SHA-256 with the metadata that changes
its pixels (norm mode, dynamic size, sizes, ranges), so the FP32, FP16 and INT8 exports of
one checkpoint share it (a run resumed at another precision keeps its outputs) but a
``--norm-mode running`` export does not; the file itself when the metadata names no
checkpoint. Settings, in clear (``split=right,size=input``): the values the flags that
change the pixels resolved to for that input, so a refusal can say which one differs.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .host import file_sha256

KEY = "p2p-provenance"  # the PNG tEXt keyword; the record's text starts with it too
VERSION = 1
WHOLE = 64 << 20  # inputs up to this size are hashed whole
_EDGE = 1 << 20  # larger ones: this much at each end ...
_BLOCK, _BLOCKS = 64 << 10, 64  # ... and this many blocks of this size spread between
_XMP_NS = "https://github.com/p2p/provenance/1.0/"
_TEXT = re.compile(rf"{KEY}/(\d+) tool=([a-z]+) source=([0-9a-f]+) by=([0-9a-f]+) "
                   r"settings=([\w.=,+-]*)")
# What a model file's metadata says that changes its pixels (not its precision: the FP32,
# FP16 and INT8 exports of one checkpoint are one model here).
_MODEL_FIELDS = ("direction", "image_size", "size_multiple", "dynamic_size", "color_space",
                 "in_channels", "out_channels", "norm_mode", "value_range", "input_depth",
                 "input_range", "output_depth", "output_range")


def digest(*parts) -> str:
    """16 hex digits of SHA-256 over ``parts`` (bytes, or anything ``str`` gives)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _regular(path) -> os.stat_result:
    """``os.stat`` of a regular file; OSError for anything else (a FIFO would block the
    read, a folder has no bytes)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path}: not a regular file")
    return st


def file_id(path) -> str:
    """16 hex digits naming a file's content (the module docstring says how much of it is
    read; a file up to ``WHOLE``: ``host.file_sha256``, remembered within the process).
    OSError when it is not a regular file or cannot be read."""
    size = _regular(path).st_size
    if size <= WHOLE:
        return file_sha256(Path(path))[:16]
    h = hashlib.sha256(str(size).encode())
    step = (size - 2 * _EDGE) // (_BLOCKS + 1)
    with open(path, "rb") as f:
        for offset, n in ([(0, _EDGE)] + [(_EDGE + k * step, _BLOCK)
                                          for k in range(1, _BLOCKS + 1)]
                          + [(size - _EDGE, _EDGE)]):
            f.seek(offset)
            h.update(f.read(n))
    return h.hexdigest()[:16]


def source_id(sources) -> str:
    """``file_id`` of one input; of several, a digest of their ids in order. OSError when
    one cannot be read."""
    ids = [file_id(p) for p in sources]
    return ids[0] if len(ids) == 1 else digest(*ids)


def model_id(meta, model_path) -> str:
    """16 hex digits naming what a model computes: its checkpoint's SHA-256 with the
    metadata that changes its pixels (``_MODEL_FIELDS``), else ``file_id`` of the file."""
    sha = getattr(meta, "checkpoint_sha256", "") or ""
    if not sha:
        return file_id(model_path)
    return digest(sha.lower(), *(getattr(meta, f, "") for f in _MODEL_FIELDS))


def settings(**values) -> str:
    """``k=v,k=v`` of the settings that change an output's pixels, in the given order
    (values are flag values: names and numbers, no spaces or commas)."""
    return ",".join(f"{k}={v}" for k, v in values.items())


def _settings_dict(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)


@dataclass(frozen=True)
class Record:
    tool: str  # "translate" or "process": the p2p command that wrote the output
    source: str  # source_id of the input(s)
    by: str  # model_id, or p2p-process's operation: what made the output
    settings: str  # ``settings()``: what the flags that change the pixels resolved to

    def text(self) -> str:
        return (f"{KEY}/{VERSION} tool={self.tool} source={self.source} by={self.by} "
                f"settings={self.settings}")

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
        return cls(*m.groups()[1:]) if m else None


@dataclass(frozen=True)
class Maker:
    """What a run makes its outputs with: the command (``tool``), the model or operation
    (``by``; ``noun`` and ``label`` name it in messages: "model", "generator.onnx") and the
    settings (``settings()``)."""

    tool: str
    by: str
    settings: str
    noun: str  # "model" or "operation"
    label: str  # this run's model file name, or p2p-process operation

    def record(self, sources) -> Record | None:
        """The record for an output of ``sources`` (paths), or None when an input cannot
        be read now (its output is written without one)."""
        try:
            return Record(self.tool, source_id(sources), self.by, self.settings)
        except OSError:
            return None

    def made_elsewhere(self, dst, sources) -> str | None:
        """Why the existing output ``dst`` is not what this run would make of ``sources``:
        another command, model or operation, other settings, or other inputs (two folders
        with the same names into one output folder; an input edited since). None when its
        record matches, or when it has none (an earlier p2p's output, kept as done as it
        always was)."""
        rec = read(dst)
        if rec is None:
            return None
        if rec.tool != self.tool:
            return f"made by p2p-{rec.tool}, not p2p-{self.tool}"
        if rec.by != self.by:
            return f"made by another {self.noun} than this run's {self.label}"
        if rec.settings != self.settings:
            old, new = _settings_dict(rec.settings), _settings_dict(self.settings)
            diff = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
            return "made with other settings (" + ", ".join(
                f"{k} {old.get(k, '?')}, this run {new.get(k, '?')}" for k in diff) + ")"
        try:
            source = source_id(sources)
        except OSError:  # the caller runs an unreadable input (``unreadable``): not here
            return None
        if rec.source == source:
            return None
        if len(sources) == 1:
            return f"made from another input than {sources[0]} (or from an earlier version of it)"
        return (f"made from other inputs than {' and '.join(map(str, sources))} (or from "
                "earlier versions of them)")


def refuse(elsewhere: list[tuple[Path, str]], made_by: str) -> None:
    """One DataError line for existing outputs ``made_elsewhere`` (``(output, why)``, in job
    order) when there are any: the first named, the count of the rest, what counts as done
    (``made_by``: "this input, model and settings") and the two ways on."""
    if elsewhere:
        (dst, why), n = elsewhere[0], len(elsewhere)
        more = f" (and {n - 1} more)" if n > 1 else ""
        raise DataError(f"{dst}: {why}{more}: an existing output is skipped as done only when "
                        f"{made_by} made it; --overwrite replaces it, or give another --output")


def unreadable(path) -> bool:
    """Whether an input is not a regular file one can open (a dangling link, a FIFO, gone,
    no permission): its existing output is never skipped as done, the run reads it and
    names the problem."""
    try:
        _regular(path)
        with open(path, "rb"):
            return False
    except OSError:
        return True


def in_the_way(dst) -> str | None:
    """Why an existing ``dst`` cannot be an output at all (a folder, a FIFO, a device:
    never opened, never skipped as done), or None for a regular file (or nothing there)."""
    try:
        mode = os.stat(dst).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return "a folder is in the way" if stat.S_ISDIR(mode) else "something not a file is in the way"


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
        _regular(dst)  # never open a FIFO (it would block) or a device
        for text in _texts(Path(dst)):
            rec = Record.parse(text)
            if rec is not None:
                return rec
    except Exception:  # noqa: BLE001 - an unreadable or foreign file carries no record
        return None
    return None

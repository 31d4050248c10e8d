"""What a video or animation file says about how to read it, beyond its frames: the display
matrix that turns a phone's frames upright (``upright``), and whether an animation whose
frames all decoded ends where its format says it must (``cut_short``). Used by
``p2p.runtime.video``'s reader; reads headers and bytes only (no PyAV import here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def display_matrix(frame) -> np.ndarray | None:
    """The 3x3 display matrix a frame carries (FFmpeg's AV_FRAME_DATA_DISPLAYMATRIX: nine
    int32, a b u / c d v / x y w, a-d in 16.16 fixed point), or None."""
    for sd in getattr(frame, "side_data", ()) or ():
        if getattr(sd.type, "name", str(sd.type)).upper().endswith("DISPLAYMATRIX"):
            m = np.frombuffer(bytes(sd), "<i4")
            return m if m.size == 9 else None
    return None


def upright(rgb: np.ndarray, frame) -> np.ndarray:
    """(H, W, 3) as a player shows it: the frame's display matrix applied by FFmpeg's own
    rule (fftools' autorotate: a rotation by quarter turns, and the flips the matrix's
    signs add; a front camera's mirror is a flip, not a half turn). Angles between quarter
    turns go to the nearest one."""
    m = display_matrix(frame)
    rotation = float(frame.rotation or 0) if m is not None else 0.0
    if m is None or np.isnan(rotation):
        return rgb
    theta = -round(rotation)
    theta = int(round(theta - 360 * np.floor(theta / 360 + 0.9 / 360))) % 360
    quarter = round(theta / 90) % 4
    if quarter == 1:  # transpose=clock, or cclock_flip (a plain transpose) when mirrored
        out = rgb.transpose(1, 0, 2) if m[3] > 0 else np.rot90(rgb, -1)
    elif quarter == 2:
        out = rgb[:, ::-1] if m[0] < 0 else rgb
        out = out[::-1] if m[4] < 0 else out
    elif quarter == 3:  # transpose=cclock, or clock_flip (the anti-transpose) when mirrored
        out = np.rot90(rgb, -1)[::-1] if m[3] < 0 else np.rot90(rgb, 1)
    else:
        out = rgb[::-1] if m[4] < 0 else rgb
    return out if out is rgb else np.ascontiguousarray(out)


def cut_short(path: Path, fmt: str | None) -> str | None:
    """Why an animation whose frames all decoded still ends early, or None: its blocks
    (GIF: extensions and images up to the trailer, GIF89a spec section 27; PNG: chunks up to
    IEND) are walked from the start, so a file cut exactly between two frames, which decodes
    frame by frame without an error, is told from a whole one; bytes after the end are not
    looked at. A WebP must be as long as its RIFF header says."""
    try:
        with open(path, "rb") as fh:
            if fmt == "GIF":
                return _gif_cut(fh)
            if fmt == "PNG":
                return _png_cut(fh)
            head = fh.read(12)
            if fmt == "WEBP" and head[:4] == b"RIFF" and \
                    int.from_bytes(head[4:8], "little") + 8 > os.fstat(fh.fileno()).st_size:
                return "the file is shorter than its RIFF header says: cut short"
    except OSError:
        return None
    return None


def _gif_cut(fh) -> str | None:
    def sub_blocks() -> bool:  # skip data sub-blocks up to the empty one: False if cut
        while (size := fh.read(1)):
            if size == b"\0":
                return True
            fh.seek(size[0], 1)
        return False

    head = fh.read(13)
    if len(head) < 13:
        return None  # Pillow would not have opened it
    if head[10] & 0x80:  # a global colour table
        fh.seek(3 << ((head[10] & 7) + 1), 1)
    while (kind := fh.read(1)):
        if kind == b"\x3b":  # the trailer: whole
            return None
        if kind == b"\x21":  # an extension: its label, then sub-blocks
            if not fh.read(1) or not sub_blocks():
                break
        elif kind == b"\x2c":  # an image: descriptor, local colour table, LZW code size, data
            desc = fh.read(9)
            if len(desc) < 9:
                break
            if desc[8] & 0x80:
                fh.seek(3 << ((desc[8] & 7) + 1), 1)
            if not fh.read(1) or not sub_blocks():
                break
        else:
            return None  # not a block this walk knows: leave it to the decoder
    return "the file ends without the GIF trailer: cut short after its last whole frame"


def _png_cut(fh) -> str | None:
    fh.seek(8)
    while len(chunk := fh.read(8)) == 8:
        if chunk[4:8] == b"IEND":
            return None
        fh.seek(int.from_bytes(chunk[:4], "big") + 4, 1)  # data and CRC
    return "the file ends without the PNG IEND chunk: cut short after its last whole frame"

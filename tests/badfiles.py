"""The bad-input corpus: every kind of file a folder of "images" really holds, made in tmp_path.

    corpus = make_corpus(folder)    # {name: Case}; names are relative to ``folder``

Each ``Case`` says whether the file decodes (``ok``: a command must process it) or must be
reported by name with a reason (``reason``: a fragment of that message). Commands differ on
a few (an odd-width image is a fine photo for p2p-translate but not an A|B training pair),
so tests pick from the corpus and state their own expectations for those.

Nothing here is downloaded or copied from elsewhere; the decompression bomb is a real PNG of
30000x30000 one-bit pixels that zlib squeezes into ~110 kB.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDE = 30000
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Fragments of the one-line reasons p2p prints, by kind of failure.
UNDECODABLE = "cannot decode"  # truncated
NOT_IMAGE = "not an image"  # text
EMPTY = "empty file"
BOMB = "decompression-bomb limit"
NOT_REGULAR = "not a regular file"
MISSING = "no such file"
LOOP = "symbolic link"  # ELOOP: "Too many levels of symbolic links", "a symbolic link loop"
DENIED = "Permission denied"
UNLISTABLE = "cannot list this folder"


@dataclass(frozen=True)
class Case:
    ok: bool  # decodes: must be processed
    reason: str = ""  # otherwise: a fragment of the message that names it
    size: tuple[int, int] | None = None  # (w, h) after EXIF orientation, for decodable ones


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB or 1-bit bombs cheaply).
    ``rows``: an iterable of raw scanline bytes (without the filter byte)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" + row) for row in rows) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=2)
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """side x side one-bit grey, all black: ~side^2/8 raw bytes compress ~1000:1."""
    row = bytes((side + 7) // 8)
    return png_bytes(side, side, 1, 0, (row for _ in range(side)))


def noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def exif_rotated_jpeg(path: Path, w: int = 40, h: int = 24) -> Path:
    """A w x h JPEG whose EXIF orientation 6 says: show it rotated 90 degrees (h x w)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(path, Image.fromarray(noise(w, h, 7)), format="JPEG", exif=exif.tobytes())


def make_corpus(folder: Path, bomb: bool = True, shape: tuple[int, int] = (32, 32)
                ) -> dict[str, Case]:
    """The bad and the odd-but-decodable files; ``shape`` (width, height) of the decodable
    ones (p2p-train needs 2:1 A|B images: (64, 32))."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = shape
    cases: dict[str, Case] = {}

    def good(name: str, img: Image.Image, size=None, **kw) -> None:
        save(folder / name, img, **kw)
        cases[name] = Case(True, size=size or img.size)

    # decodable, if odd
    good("plain.png", Image.fromarray(noise(w, h, 1)))
    arr16 = (np.arange(w * h, dtype=np.uint16).reshape(h, w) * (65536 // (w * h)))
    good("grey16.png", Image.fromarray(arr16))  # mode I;16
    rgb16 = (noise(w, h, 2).astype(">u2") * 257).tobytes()
    row = 6 * w
    (folder / "rgb16.png").write_bytes(png_bytes(w, h, 16, 2, (rgb16[i * row:(i + 1) * row]
                                                               for i in range(h))))
    cases["rgb16.png"] = Case(True, size=(w, h))
    good("cmyk.jpg", Image.fromarray(noise(w, h, 3)).convert("CMYK"), format="JPEG")
    pal = Image.fromarray(noise(w, h, 4)).convert("P", palette=Image.ADAPTIVE, colors=16)
    good("palette-alpha.png", pal, transparency=0)
    good("one-pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    frames = [Image.new("RGB", (w, h), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:],
                   duration=50, loop=0)
    cases["animated.gif"] = Case(True, size=(w, h))
    exif_rotated_jpeg(folder / "exif-rotated.jpg")
    cases["exif-rotated.jpg"] = Case(True, size=(24, 40))
    good("odd-width pair.png", Image.fromarray(noise(65, 32, 5)))
    good("ünï cödé 日本 photo.png", Image.fromarray(noise(w, h, 6)))

    # not decodable: each must be named with its reason
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64, 8)).save(buf, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    cases["truncated.jpg"] = Case(False, UNDECODABLE)
    (folder / "zero-byte.jpg").write_bytes(b"")
    cases["zero-byte.jpg"] = Case(False, EMPTY)
    (folder / "text.jpg").write_text("this is a text file, not a JPEG\n")
    cases["text.jpg"] = Case(False, NOT_IMAGE)
    if bomb:
        (folder / "bomb.png").write_bytes(bomb_png())
        cases["bomb.png"] = Case(False, BOMB)

    # file-system oddities
    os.mkfifo(folder / "fifo.png")  # opening it for reading would block forever
    cases["fifo.png"] = Case(False, NOT_REGULAR)
    (folder / "dangling.png").symlink_to(folder / "nowhere.png")
    cases["dangling.png"] = Case(False, MISSING)
    (folder / "self-loop.png").symlink_to("self-loop.png")
    cases["self-loop.png"] = Case(False, LOOP)
    (folder / "loop").symlink_to(".", target_is_directory=True)  # a folder cycle: not followed
    locked = save(folder / "locked.png", Image.fromarray(noise(w, h, 9)))
    locked.chmod(0)
    # chmod 000 stops everyone but root; as root the file is simply a good image.
    cases["locked.png"] = Case(True, size=(w, h)) if IS_ROOT else Case(False, DENIED)
    save(folder / "locked-folder" / "inside.png", Image.fromarray(noise(w, h, 10)))
    (folder / "locked-folder").chmod(0)
    cases["locked-folder/inside.png"] = (Case(True, size=(w, h)) if IS_ROOT else
                                         Case(False, UNLISTABLE))
    return cases


def readonly_folder(path: Path):
    """Make ``path`` a folder where creating files really fails, for root too.

    Returns an undo function, or None when nothing here can make it read-only. Not root:
    chmod 555. Root ignores modes, so ``chattr +i`` (immutable: EPERM for root as well) is
    used where the file system supports it (ext4, xfs, btrfs; not tmpfs)."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT:
        path.chmod(0o555)
        undo = lambda: path.chmod(0o755)  # noqa: E731
    else:
        try:
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        undo = lambda: subprocess.run(["chattr", "-i", str(path)], check=True)  # noqa: E731
    try:
        (path / ".probe").touch()
    except OSError:
        return undo
    (path / ".probe").unlink()
    undo()
    return None

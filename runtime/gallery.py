"""``index.html`` for ``p2p-translate --html``: input | output | target, one row per image.

The page stands on its own: it links only to files inside its folder, so the folder can be
moved, zipped or served as it is. Inputs and targets are JPEG thumbnails (at most
``2 * WIDTH`` pixels wide, sharp on high-density screens) in the hidden ``.gallery/``
subfolder, decoded by the decoder of every command and cropped to the half the model saw
(the target is the other half of an A|B image; whole images have none). Hidden, so that
``p2p-eval`` and ``p2p-translate`` skip the thumbnails when they list the output folder.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from . import files, images
from .errors import P2PError
from .metadata import ModelMetadata

WIDTH = 256  # display width of each cell, in CSS pixels
THUMBS = ".gallery"

_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 4px; vertical-align: top; border-bottom: 1px solid #ddd; }}
img {{ width: {w}px; display: block; }}
.failed {{ color: #b00; max-width: {w}px; }}
</style></head><body>
<h1>{title}</h1>
<p>{count} images; model {direction}, {size}px.</p>
<table><tr><th>file</th><th>input</th><th>output</th><th>target</th></tr>
"""


def _url(path: Path, root: Path) -> str:
    return quote(Path(os.path.relpath(path, root)).as_posix())


def _img(path: Path | None, root: Path) -> str:
    return "" if path is None else f'<img src="{_url(path, root)}" loading="lazy" alt="">'


def _thumbnail(img: Image.Image, path: Path) -> Path:
    img = img.copy()
    img.thumbnail((2 * WIDTH, 8 * WIDTH), Image.Resampling.BICUBIC)
    data = images.encode(img, "jpg")
    # clean=False: ``write`` removes stale temps once per folder, not once per thumbnail.
    return files.atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=False,
                              clean=False)


def thumbnails(job, root: Path, split: str, meta: ModelMetadata) -> tuple[Path | None, ...]:
    """(input thumbnail, target thumbnail or None) of one job, written under
    ``root/.gallery/``; (None, None) when the input does not decode (its row says why)."""
    try:
        img = images.open_rgb(job.src)
        half = images.choose_half(img.size, split, meta)
        base = root / THUMBS / Path(os.path.relpath(job.dst, root))
        shown = _thumbnail(images.crop_half(img, half), base.with_name(base.name + ".input.jpg"))
        if half is None:
            return shown, None
        other = "right" if half == "left" else "left"
        return shown, _thumbnail(images.crop_half(img, other),
                                 base.with_name(base.name + ".target.jpg"))
    except P2PError:
        return None, None


def render(root: Path, jobs, reasons: dict, meta: ModelMetadata, split: str) -> str:
    """The page for the jobs whose outputs live under ``root`` (thumbnails are written as a
    side effect); ``reasons`` maps failed inputs to why."""
    rows = []
    for job in jobs:
        shown, target = thumbnails(job, root, split, meta)
        name = html.escape(Path(os.path.relpath(job.dst, root)).as_posix())
        if job.src in reasons:
            out = f'<div class="failed">{html.escape(reasons[job.src])}</div>'
        elif job.dst.exists():
            out = _img(job.dst, root)
        else:
            out = '<div class="failed">no output</div>'
        rows.append(f"<tr><td>{name}</td><td>{_img(shown, root)}</td><td>{out}</td>"
                    f"<td>{_img(target, root)}</td></tr>")
    head = _HEAD.format(title=html.escape(f"p2p-translate: {root.name}"), w=WIDTH,
                        count=len(jobs), direction=meta.direction, size=meta.image_size)
    return head + "\n".join(rows) + "\n</table></body></html>\n"


def write(jobs, reasons: dict, meta: ModelMetadata, split: str) -> list[Path]:
    """One ``index.html`` (and its thumbnails) per output folder (several inputs without
    --output have several); returns the pages."""
    by_root: dict[Path, list] = {}
    for job in jobs:
        by_root.setdefault(job.root, []).append(job)
    pages = []
    for root, js in by_root.items():
        for folder, _, _ in os.walk(root / THUMBS):  # what a killed earlier run left
            files.remove_stale_temps(Path(folder))
        text = render(root, js, reasons, meta, split)
        pages.append(files.atomic_write(root / "index.html",
                                        lambda tmp, text=text: tmp.write_text(text, "utf-8")))
    return pages

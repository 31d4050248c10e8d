"""``index.html`` for ``p2p-translate --html``: input | output | target, one row per image.

Links are relative to the page and point at the original files: no copies, no thumbnails.
When the input was one half of a side-by-side A|B image, the input and target cells show the
two halves of that same file, cropped by CSS (``object-fit: cover`` in a box of the half's
aspect ratio, ``object-position`` left or right).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from . import images
from .metadata import ModelMetadata

WIDTH = 256  # display width of each cell, in CSS pixels

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
    return quote(Path(os.path.relpath(path.resolve(), root)).as_posix())


def _geometry(src: Path, split: str, meta: ModelMetadata) -> tuple[str | None, int, int]:
    """(half, width, height) from the file header only; EXIF rotations swap width and height."""
    try:
        images.check_regular_file(src)  # a FIFO named x.png would block open() forever
        with Image.open(src) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
    except Exception:
        return None, 0, 0
    return images.choose_half((w, h), split, meta), w, h


def _cell(url: str, half: str | None, w: int, h: int) -> str:
    if half is None:
        return f'<img src="{url}" loading="lazy" alt="">'
    style = f"aspect-ratio: {w // 2} / {h}; object-fit: cover; object-position: {half}"
    return f'<img src="{url}" loading="lazy" alt="" style="{style}">'


def render(root: Path, jobs, reasons: dict, meta: ModelMetadata, split: str) -> str:
    """The page for the jobs whose outputs live under ``root``; ``reasons`` maps failed
    inputs to why."""
    rows = []
    for job in jobs:
        half, w, h = _geometry(job.src, split, meta)
        src = _url(job.src, root)
        name = html.escape(Path(os.path.relpath(job.dst, root)).as_posix())
        if job.src in reasons:
            out = f'<div class="failed">{html.escape(reasons[job.src])}</div>'
        elif job.dst.exists():
            out = f'<img src="{_url(job.dst, root)}" loading="lazy" alt="">'
        else:
            out = '<div class="failed">no output</div>'
        target = "" if half is None else _cell(src, "right" if half == "left" else "left", w, h)
        rows.append(f"<tr><td>{name}</td><td>{_cell(src, half, w, h)}</td><td>{out}</td>"
                    f"<td>{target}</td></tr>")
    head = _HEAD.format(title=html.escape(f"p2p-translate: {root.name}"), w=WIDTH,
                        count=len(jobs), direction=meta.direction, size=meta.image_size)
    return head + "\n".join(rows) + "\n</table></body></html>\n"


def pages(jobs, reasons: dict, meta: ModelMetadata, split: str) -> dict[Path, str]:
    """{output root: page}, one page per output folder (several inputs without --output)."""
    by_root: dict[Path, list] = {}
    for job in jobs:
        by_root.setdefault(job.root, []).append(job)
    return {root / "index.html": render(root, js, reasons, meta, split)
            for root, js in by_root.items()}

"""``p2p-export --web DIR`` / ``p2p-pretrained get NAME --web DIR``: a static pix2pix page.

    write_site(models, WebConfig(output=Path("site")))   # -> the model file the site carries

The site runs the generator in the visitor's browser (onnxruntime-web, in a Web Worker) and
needs no server beyond static files:

    index.html, app.css, draw.js   the drawing page of p2p-serve (runtime/static), reused
    web.js, worker.js, pixels.js   the worker, window.p2p, the pre/post-processing (site/)
    model.onnx                     the chosen verified export (smallest, or --web-precision)
    model.json                     its p2p metadata and processing rules (runtime/processing)
    ort/                           onnxruntime-web's runtime files (runtime/webruntime)
    _headers                       COOP/COEP for hosts that read it (Netlify, Cloudflare Pages)

Nothing is written until the model is chosen and the runtime tarball is verified; every file
is written atomically, so a failure leaves the folder as it was or with whole files only.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from p2p.runtime import webruntime
from p2p.runtime.errors import ModelError, P2PError, choices
from p2p.runtime.files import atomic_write
from p2p.runtime.metadata import MODEL_PRECISIONS
from p2p.runtime.modelfile import read_model_file
from p2p.runtime.processing import page_metadata
from p2p.runtime.webserve import ISOLATION  # the headers p2p-serve --web sends

STATIC = Path(__file__).resolve().parents[1] / "runtime" / "static"
SITE = Path(__file__).resolve().parent / "site"
PAGE_FILES = {"app.css": STATIC, "draw.js": STATIC, "web.js": SITE, "worker.js": SITE,
              "pixels.js": SITE}
# Above this a model makes a poor page: issue 19 measured the 218 MB FP32 generator peaking
# near 1 GB in Chromium's renderer, and every visitor downloads it whole first.
PAGE_MODEL_MB = 50
HOST_FILE_MIB = 25  # Cloudflare Pages' largest file (its documented limit)
FLAG = {"fp16": "--fp16", "int8": "--int8", "fp32": ""}


@dataclass(frozen=True)
class WebConfig:
    output: Path  # the site's folder
    precision: str | None = None  # fp32 | fp16 | int8; None: the smallest verified export
    webgpu: bool = True  # carry the WebGPU runtime (28.7 MB) besides the WASM one (14.8 MB)
    cache_dir: Path | None = None  # None: $P2P_CACHE (runtime/host.cache_root)
    progress: bool = True


def choose(models: list[Path], precision: str | None) -> Path:
    """The export the page carries: of the verified, readable ``models`` (one checkpoint's
    FP32/FP16/INT8 files), the one of ``precision``, else the smallest file.

    Raises ``ModelError`` when none is verified, when the asked precision was not exported
    (naming the flag that exports it), or when a file keeps its weights in external data.
    """
    if precision is not None and precision not in MODEL_PRECISIONS:
        raise ModelError(f"--web-precision {precision!r} is not one of {choices(MODEL_PRECISIONS)}")
    found = {}
    for path in models:
        if not Path(path).is_file():
            continue
        model = read_model_file(Path(path))
        if model.metadata.verified:
            found.setdefault(model.metadata.model_precision, model)
    if not found:
        raise ModelError(f"{models[0] if models else 'no model'}: no verified export to put on "
                         "a page (export without --no-verify)")
    if precision is not None and precision not in found:
        raise ModelError(f"{Path(models[0]).parent}: no verified {precision.upper()} export "
                         f"(export it with {FLAG[precision]}); exported: {choices(found)}")
    model = found[precision] if precision else min(
        found.values(), key=lambda m: m.path.stat().st_size)
    if model.external_data:
        raise ModelError(f"{model.path}: its weights are in {len(model.external_data)} external "
                         "data file(s); the page loads one file (export it without external "
                         "data)")
    return model.path


def exports_beside(fp32: Path) -> list[Path]:
    """``fp32`` and the exports p2p-export wrote beside it (``<stem>.fp16.onnx``,
    ``<stem>.int8.onnx``) from the same checkpoint (an older INT8 of other weights is not it)."""
    fp32 = Path(fp32)
    digest = read_model_file(fp32).metadata.checkpoint_sha256
    found = [fp32]
    for path in sorted(fp32.parent.glob(f"{fp32.stem}.*{fp32.suffix}")):
        if path.name.startswith(".") or path == fp32:
            continue
        try:
            if read_model_file(path).metadata.checkpoint_sha256 == digest:
                found.append(path)
        except ModelError:
            continue  # not a p2p model: never a candidate
    return found


def index_html() -> str:
    """p2p-serve's page (runtime/static/index.html) with the site's paths and script."""
    html = (STATIC / "index.html").read_text()
    edits = (('href="/static/app.css"', 'href="app.css"'),
             ('src="/static/draw.js"', 'src="draw.js"'),
             ('<script src="/static/app.js"></script>', '<script type="module" src="web.js">'
              '</script>\n<noscript>This page runs the model in your browser: it needs '
              'JavaScript.</noscript>'),
             ('<span id="model">loading model info…</span>',
              '<span id="model">loading the model…</span> <span id="backend"></span>'),
             ("<title>p2p: draw and translate</title>", "<title>p2p: pix2pix in your browser</title>"
              '\n<link rel="icon" href="data:,">'))  # no favicon request (a 404 on static hosts)
    for old, new in edits:
        if old not in html:  # the serve page changed: this rewrite must follow it
            raise P2PError(f"{STATIC / 'index.html'}: no {old!r} to rewrite for the static page")
        html = html.replace(old, new)
    return html


def headers_file() -> str:
    """Netlify / Cloudflare Pages ``_headers``: isolation headers on every path."""
    lines = ["# Cross-origin isolation: lets onnxruntime-web run WASM on several threads.",
             "# Hosts that ignore this file (GitHub Pages) run the page on one thread.", "/*"]
    return "\n".join(lines + [f"  {k}: {v}" for k, v in ISOLATION.items()]) + "\n"


def write_site(models: list[Path], cfg: WebConfig, say=print) -> Path:
    """Write the static site for the best of ``models`` into ``cfg.output``; returns the
    chosen model file. Says the sizes (and a warning for a model too large for a page) via
    ``say``. Raises ``ModelError``, ``DownloadError`` (no network and no cache: what to fetch)
    or ``HashMismatch`` (runtime tarball not the pinned one) before writing anything."""
    model = choose(models, cfg.precision)
    meta = read_model_file(model).metadata
    # The page draws and shows 8-bit RGB canvases: a model of other bands or depths would get
    # made-up bands or lose its depth without a word (issue 19's rule: refuse, never fake).
    if meta.color_space == "rgb" and (meta.in_channels not in (1, 3)
                                      or meta.out_channels not in (1, 3)):
        raise ModelError(f"{model}: a {meta.in_channels}-band to {meta.out_channels}-band "
                         "model cannot run on the page (it draws and shows 1- or 3-band images); "
                         "translate with p2p-translate")
    if (meta.input_depth, meta.output_depth) != ("uint8", "uint8"):
        raise ModelError(f"{model}: a model of {meta.input_depth} inputs and "
                         f"{meta.output_depth} outputs cannot run on the page (8-bit canvases); "
                         "translate with p2p-translate")
    tarball = webruntime.ensure_tarball(cfg.cache_dir, cfg.progress)
    runtime = webruntime.runtime_files(tarball, cfg.webgpu)
    out = Path(cfg.output)
    try:
        (out / "ort").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise P2PError(f"{out}: cannot create the site folder: {e.strerror or e}") from None
    size = model.stat().st_size
    doc = page_metadata(meta, "model.onnx", size)
    doc["ort"] = {"package": webruntime.PACKAGE, "version": webruntime.VERSION,
                  "integrity": webruntime.INTEGRITY}
    doc["webgpu"] = cfg.webgpu
    # The drawing palette: black on white for the edges2* models (edges2shoes, edges2cats),
    # the facade labels otherwise (what p2p-serve's page starts with).
    sketch = "edges2" in meta.source_url or "edges2" in model.parent.name
    doc["page"] = {"palette": "sketch" if sketch else "facades"}
    texts = {"index.html": index_html(), "_headers": headers_file(),
             "model.json": json.dumps(doc, indent=1) + "\n"}
    for name, text in texts.items():
        atomic_write(out / name, lambda tmp, t=text: tmp.write_text(t))
    for name, folder in PAGE_FILES.items():
        atomic_write(out / name, lambda tmp, src=folder / name: shutil.copyfile(src, tmp))
    for name, data in runtime.items():
        atomic_write(out / "ort" / name, lambda tmp, d=data: tmp.write_bytes(d))
    if not cfg.webgpu:  # a site written before with WebGPU must not keep a stale runtime
        for name in webruntime.WEBGPU_FILES:
            (out / "ort" / name).unlink(missing_ok=True)
    atomic_write(out / "model.onnx", lambda tmp: shutil.copyfile(model, tmp))
    mb = size / 1e6
    ort_mb = sum(len(d) for d in runtime.values()) / 1e6
    say(f"web: {out}/ : model.onnx {meta.model_precision.upper()} {mb:.1f} MB (from {model}), "
        f"onnxruntime-web {webruntime.VERSION} {ort_mb:.1f} MB"
        f"{'' if cfg.webgpu else ' (WASM only)'}; serve it with p2p-serve --web {out}")
    if mb > PAGE_MODEL_MB:
        better = ("--web-precision int8 (export it with --int8)" if meta.model_precision != "int8"
                  else "a smaller generator (p2p-train --ngf 32)")
        say(f"warning: model.onnx is {mb:.0f} MB, too large for a page: every visitor downloads "
            f"it before the first image and the browser needs several times that in memory; "
            f"use {better}")
    big = [n for n, d in [("model.onnx", size)] + [(f"ort/{k}", len(v)) for k, v in runtime.items()]
           if d > HOST_FILE_MIB << 20]
    if big:
        say(f"note: {', '.join(big)} over {HOST_FILE_MIB} MiB: Cloudflare Pages refuses such "
            "files" + ("; --web-no-webgpu leaves out the WebGPU runtime" if cfg.webgpu else ""))
    return model

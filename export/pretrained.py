"""``p2p-pretrained get|import``: a published generator -> verified ONNX in the model cache.

    get(name)            download <base>/<name>.pth (resumable, SHA-256 checked), then export
    import_file(f, name) the same from a file the user fetched by hand (no network)

The catalogue, the cache layout and name resolution live in ``runtime/pretrained.py``
(torch-free); this module adds what needs torch: the export, with p2p's own exporter
(``export/onnx.py``: per-image norm, dropout removed, every check before any file appears).
The architecture comes from the weights themselves (``trainer/reference.py``), the task
(direction) from the catalogue; the ONNX metadata records the source URL and the SHA-256.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from p2p.runtime import download
from p2p.runtime import pretrained as catalogue
from p2p.runtime.host import file_sha256
from p2p.runtime.modelfile import read_metadata
from p2p.runtime.errors import CheckpointError, DownloadError, HashMismatch, ModelError, choices
from p2p.runtime.files import atomic_write
from p2p.runtime.metadata import DIRECTIONS
from p2p.trainer.checkpoint import load_state
from p2p.trainer.reference import architecture, is_junyanz

from .load import Overrides
from .int8 import int8_path
from .onnx import ExportConfig, fp16_path, main as export

# precision -> (the ExportConfig flag that adds it, the file the export writes for it).
# FP32 is always written; a new precision of the exporter is one line here.
PRECISIONS = {
    "fp16": ("fp16", fp16_path),
    "int8": ("int8", int8_path),  # calibrated on --calibration DIR (a download has no run)
}


@dataclass(frozen=True)
class PretrainedConfig:
    name: str
    precisions: tuple[str, ...] = ()  # keys of PRECISIONS, besides FP32
    sha256: str | None = None  # --sha256: the digest the file must have
    force: bool = False  # download (get) and export again even when cached
    progress: bool = True
    direction: str | None = None  # import of a name outside the catalogue [AtoB]
    calibration: Path | None = None  # --int8: the images to calibrate on (inputs or A|B pairs)


def entry(name: str, direction: str | None = None) -> catalogue.Pretrained:
    """The catalogue entry; a name outside it only with an explicit ``direction``."""
    if name in catalogue.CATALOGUE:
        known = catalogue.CATALOGUE[name]
        if direction and direction != known.direction:
            raise ModelError(f"{name}: --direction {direction} contradicts the published "
                             f"model's {known.direction}; drop the flag")
        return known
    if not catalogue.NAME_RE.fullmatch(name):
        raise ModelError(f"{name!r}: a model name is letters, digits, '_', '.', '-'")
    if direction is None:
        raise ModelError(f"{name}: not a published model (known: "
                         f"{choices(catalogue.CATALOGUE)}); to import your own file under this "
                         f"name, give its --direction ({choices(DIRECTIONS)})")
    return catalogue.Pretrained(name, "imported by hand", "", direction)


def get(cfg: PretrainedConfig) -> list[Path]:
    """Download (unless cached) and export ``cfg.name``; returns the ONNX files.

    Raises ``DownloadError`` (one line: what was tried, and the ``import`` command) when the
    server cannot be reached, ``HashMismatch`` when the file is not the expected one.
    """
    if cfg.name not in catalogue.CATALOGUE:
        raise ModelError(f"{cfg.name}: not a published model; known: "
                         f"{choices(catalogue.CATALOGUE)} (p2p-pretrained list)")
    item = catalogue.CATALOGUE[cfg.name]
    book = download.HashBook(catalogue.models_dir() / "sha256.json")
    want = download.expected(item.name, item.sha256, cfg.sha256, book)
    pth = catalogue.weights_path(item.name)
    if pth.is_file() and not cfg.force:
        digest = _check(pth, want, f"the cached {pth}")
        if _exported(item.name, cfg.precisions, digest):
            print(f"{item.name}: already in the cache ({catalogue.onnx_path(item.name)}, "
                  f"sha256 {digest[:12]}...); --force to fetch it again")
            return _outputs(item.name, cfg.precisions)
    else:
        try:
            digest = download.fetch(item.url, pth, want, cfg.progress)
        except HashMismatch:
            raise
        except DownloadError as e:
            with contextlib.suppress(OSError):  # a first try leaves no empty model folder
                pth.parent.rmdir()
            raise DownloadError(f"{e}; without network, fetch the file elsewhere and run "
                                f"p2p-pretrained import FILE.pth --name {item.name}") from None
        print(f"downloaded {item.url} -> {pth} (sha256 {digest})")
    outputs = _export(item, pth, digest, item.url, cfg)
    # Recorded once the file has proved to be a generator that exports: a first download
    # that went wrong (e.g. resumed across a change on the server) is never trusted.
    book.record(item.name, digest, item.url)
    return outputs


def import_file(source: Path, cfg: PretrainedConfig) -> list[Path]:
    """Export a ``*_net_G.pth`` fetched by hand and place it in the cache under ``cfg.name``;
    its SHA-256 is checked like a download's (pinned, ``--sha256``, or recorded).

    The file is exported first and copied into the cache only once it exported, so a
    failed re-import leaves the cached weights (and their exports) as they were. An import
    never writes the hash record of a published name: only a real download (``get``) says
    what the published file is, and a user's file (another ngf, a fine-tune) must not make
    the real one look corrupt later. Its metadata names the published URL only when the
    file matched a known digest of it, else the file it came from."""
    item = entry(cfg.name, cfg.direction)
    source = Path(source)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such file")
    book = download.HashBook(catalogue.models_dir() / "sha256.json")
    want = download.expected(item.name, item.sha256, cfg.sha256, book)
    digest = _check(source, want, str(source))
    published = item.name in catalogue.CATALOGUE
    origin = f"file://{source.resolve()}"
    pth = catalogue.weights_path(item.name)
    try:
        outputs = _export(item, source, digest, item.url if published and want else origin,
                          cfg)
    except BaseException:
        with contextlib.suppress(OSError):  # a first import leaves no empty model folder
            pth.parent.rmdir()
        raise
    if source.resolve() != pth.resolve():
        atomic_write(pth, lambda tmp: shutil.copyfile(source, tmp))
    print(f"imported {source} -> {pth} (sha256 {digest})")
    if not published:  # a name of the user's own: its first file is the one to expect
        book.record(item.name, digest, origin)
    return outputs


def _check(path: Path, want: str | None, what: str) -> str:
    digest = file_sha256(path)
    if want and digest != want:
        raise HashMismatch(f"{what}: sha256 {digest} does not match the expected {want}; the "
                           "file is corrupt or not the published one (delete it, or pin "
                           "another digest with --sha256)")
    return digest


def _outputs(name: str, precisions) -> list[Path]:
    fp32 = catalogue.onnx_path(name)
    return [fp32] + [PRECISIONS[p][1](fp32) for p in precisions]


def _exported(name: str, precisions, digest: str) -> bool:
    """Every requested file is there and was exported from exactly these weights."""
    try:
        return all(p.is_file() and read_metadata(p).checkpoint_sha256 == digest
                   for p in _outputs(name, precisions))
    except ModelError:  # an unreadable or foreign file: export again over it
        return False


def _export(item: catalogue.Pretrained, pth: Path, digest: str, url: str,
            cfg: PretrainedConfig) -> list[Path]:
    state = load_state(pth)
    arch = architecture(state) if is_junyanz(state) else None
    if arch is None:
        raise CheckpointError(f"{pth}: not a pix2pix generator state_dict (*_net_G.pth of "
                              "junyanz/pytorch-CycleGAN-and-pix2pix)")
    # The weights say the architecture (a mirror may serve a smaller model); the catalogue
    # says the task, which no weight records.
    overrides = Overrides(direction=item.direction, **arch)
    export_cfg = ExportConfig(source=pth, output=catalogue.onnx_path(item.name),
                              overrides=overrides, source_url=url,
                              calibration=cfg.calibration)
    export_cfg = replace(export_cfg, **{PRECISIONS[p][0]: True for p in cfg.precisions})
    export(export_cfg)
    outputs = _outputs(item.name, cfg.precisions)
    print(f"{item.name}: ready; p2p-translate DIR --model {item.name} "
          f"(sha256 {digest[:12]}...)")
    return outputs

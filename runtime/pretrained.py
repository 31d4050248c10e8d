"""The published pix2pix generators: catalogue, cache layout, and model-name resolution.

The models are the ones junyanz/pytorch-CycleGAN-and-pix2pix's own
``scripts/download_pix2pix_model.sh`` fetches, ``$BASE/<name>.pth``: generator state_dicts
of its ``unet_256`` (ngf 64, batch norm, dropout, 3 -> 3 channels, 256 x 256). Downloading
and exporting them needs torch (``p2p.export.pretrained``); this module does not, so that
``p2p-translate --model NAME`` and ``p2p-serve --model NAME`` resolve a name on a
runtime-only install.

Cache layout (``$P2P_CACHE/models``, default ``~/.cache/p2p/models``)::

    sha256.json                 the digest first seen for each name (runtime/download.py)
    <name>/<name>_net_G.pth     the downloaded (or imported) state_dict
    <name>/generator.onnx       the verified FP32 export; generator.fp16.onnx etc. beside it
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .host import cache_root
from .errors import ModelError
from .modelfile import EXPORT_NAME

BASE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch"
LICENCE = ("BSD, per junyanz/pytorch-CycleGAN-and-pix2pix's LICENSE; the training images "
           "keep their own dataset's terms")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ONNX_NAME = EXPORT_NAME


@dataclass(frozen=True)
class Pretrained:
    """One published generator. ``direction`` is the side of the reference dataset's A|B
    images that is the input (so ``--split auto`` on that dataset's val folder just works)."""

    name: str
    task: str
    dataset: str  # the pix2pix dataset it was trained on (trainer/datasets.py NAMES)
    direction: str
    image_size: int = 256
    ngf: int = 64
    norm: str = "batch"
    sha256: str | None = None  # pinned only where known for certain; else trust on first use

    @property
    def url(self) -> str:
        return f"{base_url()}/{self.name}.pth"


# Directions follow the reference's datasets (A|B): facades is photo|labels, maps is
# aerial|map, edges2shoes is edges|photo, night2day is night|day.
CATALOGUE = {p.name: p for p in (
    Pretrained("facades_label2photo", "facade label map -> building photo", "facades", "BtoA"),
    Pretrained("sat2map", "aerial photo -> map (Google Maps)", "maps", "AtoB"),
    Pretrained("map2sat", "map -> aerial photo (Google Maps)", "maps", "BtoA"),
    Pretrained("edges2shoes", "edge drawing -> shoe photo", "edges2shoes", "AtoB"),
    Pretrained("day2night", "daytime scene -> night scene", "night2day", "BtoA"),
)}


def base_url() -> str:
    return (os.environ.get("P2P_MODELS_URL") or BASE_URL).rstrip("/")


def models_dir() -> Path:
    return cache_root() / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


def weights_path(name: str) -> Path:
    return model_dir(name) / f"{name}_net_G.pth"


def onnx_path(name: str) -> Path:
    return model_dir(name) / ONNX_NAME


def cached_names() -> list[str]:
    """Names whose FP32 export is in the cache, sorted."""
    try:
        return sorted(d.name for d in models_dir().iterdir() if (d / ONNX_NAME).is_file())
    except OSError:
        return []


def is_downloaded(name: str) -> bool:
    """Whether ``name`` is a pretrained model whose FP32 export is in the cache."""
    return bool(NAME_RE.fullmatch(name)) and onnx_path(name).is_file()


def resolve_model(value: Path | str) -> Path:
    """``--model``: an existing file wins; else a downloaded pretrained name -> its FP32 ONNX
    (a folder of that name, e.g. a dataset's, does not hide it).

    Raises ``ModelError`` (one line) for a name that is not downloaded, listing the names
    that are, or saying how to get a catalogue name.
    """
    path = Path(value)
    if path.exists() and not path.is_dir():
        return path
    name = str(value)
    if is_downloaded(name):
        return onnx_path(name)  # even when a folder of that name is in the way (a dataset's)
    have = ", ".join(cached_names()) or "none"
    if path.is_dir():
        raise ModelError(f"{path}: a folder, not a model file, nor a downloaded pretrained "
                         f"model (downloaded in {models_dir()}: {have}); pass the .onnx file "
                         "(p2p-export writes RUN/export/generator.onnx)")
    if name in CATALOGUE:
        raise ModelError(f"{name}: pretrained model not downloaded yet; run p2p-pretrained "
                         f"get {name} (downloaded in {models_dir()}: {have})")
    raise ModelError(f"{name}: no such model file, nor a downloaded pretrained model "
                     f"(downloaded in {models_dir()}: {have}; p2p-pretrained list)")

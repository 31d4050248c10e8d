"""Find and load the generator to export: a p2p checkpoint, a run folder, or a junyanz file.

Two kinds of file are accepted, both loaded with ``weights_only=True`` (never arbitrary
pickles):
- a p2p checkpoint (``trainer/checkpoint.py`` contract): it records the architecture
  (``model``), the task (direction, colour space, data folder) and the training step;
- a generator state_dict saved by junyanz/pytorch-CycleGAN-and-pix2pix (``*_net_G.pth``):
  bare weights, recognised by their key names (``model.model.0.weight``). Such files do not
  record the architecture, so it comes from flags (``--ngf``, ``--norm``, ``--image-size``,
  channels, ``--direction``); our ``UnetGenerator`` mirrors that project's module layout, so
  the weights load with ``strict=True`` and no renaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from p2p.runtime.errors import CheckpointError, choices
from p2p.runtime.host import file_sha256
from p2p.runtime.metadata import COLOR_SPACES, DATA_DEPTHS, DIRECTIONS
from p2p.trainer.checkpoint import check_checkpoint, load_state
from p2p.trainer.models import ModelConfig
from p2p.trainer.reference import JUNYANZ_KEY, build_generator, is_junyanz

ARCH_FLAGS = ("ngf", "norm", "image_size", "in_channels", "out_channels")


@dataclass(frozen=True)
class Overrides:
    """Facts from flags: required for junyanz files, cross-checked for p2p checkpoints."""

    ngf: int | None = None
    norm: str | None = None
    image_size: int | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    direction: str | None = None
    color_space: str | None = None


@dataclass(frozen=True)
class Loaded:
    """A generator ready to export, with every fact the metadata needs."""

    generator: nn.Module  # eval() not yet applied; verify/export pick the mode they need
    model: ModelConfig
    direction: str
    color_space: str
    step: int
    sha256: str
    source: str  # "p2p" or "junyanz"
    path: Path  # the checkpoint file
    run_dir: Path  # where the default export folder goes
    task: dict  # the checkpoint's task: where its data is (``trainer.rundata.find``); {} if none
    # The training data's bit depths (runtime.metadata.DATA_DEPTHS); checkpoints written
    # before p2p recorded them, and junyanz files, were trained on 8-bit images.
    input_depth: str = "uint8"
    output_depth: str = "uint8"


def resolve(source: Path | None, runs_dir: Path = Path("runs")) -> Path:
    """A checkpoint file from a file, a run folder, or (None) the newest run in ``runs_dir``."""
    if source is None:
        latest = sorted(Path(runs_dir).glob("*/checkpoints/latest.pt"),
                        key=lambda p: p.stat().st_mtime)
        if not latest:
            raise CheckpointError(f"{runs_dir}: no run with checkpoints/latest.pt; pass a "
                                  "checkpoint file or a run folder")
        return latest[-1]
    source = Path(source)
    if source.is_dir():
        ckpt = source / "checkpoints" / "latest.pt"
        if not ckpt.is_file():
            raise CheckpointError(f"{source}: a folder without checkpoints/latest.pt (not a "
                                  "p2p run folder); pass the checkpoint file itself")
        return ckpt
    if not source.exists():
        raise CheckpointError(f"{source}: no such checkpoint file or run folder")
    return source


def run_dir_of(ckpt: Path) -> Path:
    # <run>/checkpoints/latest.pt -> <run>; a loose file -> its own folder.
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load(source: Path | None, overrides: Overrides = Overrides(),
         runs_dir: Path = Path("runs")) -> Loaded:
    path = resolve(source, runs_dir)
    state = load_state(path)
    if is_junyanz(state):
        return _load_junyanz(path, state, overrides)
    if "format" not in state:
        raise CheckpointError(
            f"{path}: neither a p2p checkpoint (no 'format' entry) nor a pix2pix generator "
            f"state_dict (no '{JUNYANZ_KEY}' key); found keys {_some_keys(state)}")
    return _load_p2p(path, check_checkpoint(state, path), overrides)


def _load_p2p(path: Path, state: dict, o: Overrides) -> Loaded:
    try:
        cfg = ModelConfig(**state["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config in checkpoint: {e}") from None
    task = state["task"] if isinstance(state["task"], dict) else {}
    facts = {"direction": task.get("direction", "AtoB"),
             "color_space": task.get("color_space", "rgb")}
    # A flag that contradicts the checkpoint is a mistake to report, not to silently obey
    # (the weights would not fit) nor to silently ignore (the user believes it applied).
    recorded = {**{k: getattr(cfg, k) for k in ARCH_FLAGS}, **facts}
    for name, have in recorded.items():
        want = getattr(o, name)
        if want is not None and want != have:
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(f"{path}: {flag} {want} contradicts the checkpoint, which "
                                  f"records {name}={have}; drop the flag")
    generator = build_generator(path, cfg, state["generator"])
    depths = {k: task.get(k, "uint8") for k in ("input_depth", "output_depth")}
    if any(d not in DATA_DEPTHS for d in depths.values()):
        raise CheckpointError(f"{path}: bad data depths in checkpoint: {depths}")
    return Loaded(generator, cfg, facts["direction"], facts["color_space"], int(state["step"]),
                  file_sha256(path), "p2p", path, run_dir_of(path), task, **depths)


def _load_junyanz(path: Path, state: dict, o: Overrides) -> Loaded:
    try:
        cfg = ModelConfig(in_channels=o.in_channels or 3, out_channels=o.out_channels or 3,
                          image_size=o.image_size or 256, ngf=o.ngf or 64,
                          norm=o.norm or "batch")
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    direction, color_space = o.direction or "AtoB", o.color_space or "rgb"
    if direction not in DIRECTIONS or color_space not in COLOR_SPACES:
        raise CheckpointError(f"{path}: direction must be {choices(DIRECTIONS)} and colour "
                              f"space {choices(COLOR_SPACES)}")
    if color_space == "lab" and (cfg.in_channels, cfg.out_channels) != (1, 2):
        raise CheckpointError(f"{path}: --color-space lab needs --in-channels 1 "
                              "--out-channels 2 (L in, ab out)")
    generator = build_generator(path, cfg, state, junyanz=True)
    return Loaded(generator, cfg, direction, color_space, 0, file_sha256(path), "junyanz",
                  path, run_dir_of(path), {})


def _some_keys(state: dict, n: int = 4) -> str:
    keys = [str(k) for k in list(state)[:n]]
    return ", ".join(keys) + (", ..." if len(state) > n else "") if keys else "(none)"

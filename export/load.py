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

import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from p2p.runtime.errors import CheckpointError, choices
from p2p.runtime.metadata import COLOR_SPACES, DIRECTIONS
from p2p.trainer.checkpoint import check_checkpoint, load_state, sha256_file
from p2p.trainer.models import ModelConfig, UnetGenerator

JUNYANZ_KEY = "model.model.0.weight"  # the outermost down-convolution in their UnetGenerator
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
    data: str | None  # the training data folder or dataset name (val images for checks)


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


def is_junyanz(state: dict) -> bool:
    return JUNYANZ_KEY in state and "format" not in state


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
    generator = _build(path, cfg, state["generator"])
    return Loaded(generator, cfg, facts["direction"], facts["color_space"], int(state["step"]),
                  sha256_file(path), "p2p", path, run_dir_of(path), task.get("data"))


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
    # The hint is read off the file as it is: after dropping instance-norm statistics a
    # BatchNorm file would look like an instance-norm one.
    generator = _build(path, cfg, _drop_instance_norm_stats(state, cfg),
                       hint=_junyanz_hint(state))
    return Loaded(generator, cfg, direction, color_space, 0, sha256_file(path), "junyanz",
                  path, run_dir_of(path), None)


def _drop_instance_norm_stats(state: dict, cfg: ModelConfig) -> dict:
    """What junyanz's ``patch_instance_norm_state_dict`` does for pre-0.4 checkpoints.

    Old PyTorch saved running_mean/var (and later num_batches_tracked) for InstanceNorm
    layers that have no such buffers; they carry no information, so they are dropped.
    """
    if cfg.norm != "instance":
        return state
    inst = {name for name, m in UnetGenerator(cfg).named_modules()
            if isinstance(m, nn.InstanceNorm2d)}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state.items()
            if not (k.rsplit(".", 1)[-1] in stats and k.rsplit(".", 1)[0] in inst)}


def _build(path: Path, cfg: ModelConfig, weights, hint: str = "") -> nn.Module:
    """The generator of ``cfg`` with ``weights``; CheckpointError (one line: what differs,
    and ``hint``) when they do not fit."""
    generator = UnetGenerator(cfg)
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: generator weights are a {type(weights).__name__}, "
                              "not a state_dict")
    try:
        generator.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, AttributeError):
        raise CheckpointError(
            f"{path}: weights do not fit a U-Net with ngf={cfg.ngf}, norm={cfg.norm}, "
            f"image_size={cfg.image_size}, channels {cfg.in_channels}->{cfg.out_channels} "
            f"({_difference(generator.state_dict(), weights)}){hint}") from None
    return generator


def _difference(want: dict, got: dict) -> str:
    """What torch's load_state_dict error says, in a few words of our own (its message is
    many lines and ends mid-sentence when cut)."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shaped = [k for k in want if k in got and getattr(got[k], "shape", None) != want[k].shape]
    parts = [f"{len(v)} {what}, e.g. {v[0]}" for v, what in (
        (missing, "missing"), (unexpected, "unexpected"), (shaped, "of another shape")) if v]
    return "; ".join(parts) or "the weights are not tensors"


def _junyanz_hint(state: dict) -> str:
    """Read the architecture off the weights, to tell the user which flags would fit."""
    try:
        first = state[JUNYANZ_KEY]
        # Each nested block is entered through index 1 (outermost) or 3 (the others).
        depth = 1 + max(len(re.findall(r"\.[13]\.model(?=\.)", k)) for k in state)
        out_ch = state["model.model.3.weight"].shape[1]
        # junyanz's BatchNorm is affine (weight + running stats); their InstanceNorm is not
        # (an old file may still hold its running stats, never a weight beside them).
        norm = "batch" if any(k.endswith(".running_mean") and
                              k.removesuffix(".running_mean") + ".weight" in state
                              for k in state) else "instance"
        return (f"; the file looks like --ngf {first.shape[0]} --in-channels {first.shape[1]} "
                f"--out-channels {out_ch} --image-size {2 ** depth} --norm {norm}")
    except (AttributeError, IndexError, KeyError, TypeError):
        return ""


def _some_keys(state: dict, n: int = 4) -> str:
    keys = [str(k) for k in list(state)[:n]]
    return ", ".join(keys) + (", ..." if len(state) > n else "") if keys else "(none)"

"""Files of junyanz/pytorch-CycleGAN-and-pix2pix: recognise, read the architecture, load.

That project saves bare state_dicts (``*_net_G.pth``, ``*_net_D.pth``) that do not record
the architecture. p2p's ``UnetGenerator`` and ``PatchDiscriminator`` mirror its module layout,
so the weights load with ``strict=True`` and no renaming; when they do not fit, the
architecture read off the weight shapes tells the user which flags would. Used by the
exporter (``export/load.py``), fine-tuning (``p2p-train --init-from``) and
``p2p-pretrained``: one place for these rules.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from p2p.runtime.errors import CheckpointError
from p2p.trainer.models import ModelConfig, PatchDiscriminator, UnetGenerator

JUNYANZ_KEY = "model.model.0.weight"  # the outermost down-convolution in their UnetGenerator


def is_junyanz(state: dict) -> bool:
    return JUNYANZ_KEY in state and "format" not in state


def architecture(state: dict) -> dict | None:
    """``{ngf, in_channels, out_channels, image_size, norm}`` read off a generator
    state_dict's shapes and keys (the U-Net depth gives the size: 2 ** depth); None when the
    weights are not a U-Net's."""
    try:
        first = state[JUNYANZ_KEY]
        # Each nested block is entered through index 1 (outermost) or 3 (the others).
        depth = 1 + max(len(re.findall(r"\.[13]\.model(?=\.)", k)) for k in state)
        return {"ngf": int(first.shape[0]), "in_channels": int(first.shape[1]),
                "out_channels": int(state["model.model.3.weight"].shape[1]),
                "image_size": 2 ** depth,
                # junyanz's BatchNorm is affine (weight + running stats); their InstanceNorm
                # is not (an old file may still hold its running stats, never a weight
                # beside them).
                "norm": "batch" if any(k.endswith(".running_mean") and
                                       k.removesuffix(".running_mean") + ".weight" in state
                                       for k in state) else "instance"}
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def hint(state: dict) -> str:
    """'; the file looks like --ngf 64 ... --norm batch (...)', or '' when unreadable."""
    arch = architecture(state)
    if arch is None:
        return ""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in arch.items())
    return f"; the file looks like {flags}"


def drop_instance_norm_stats(state: dict, cfg: ModelConfig) -> dict:
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


def build_generator(path: Path, cfg: ModelConfig, weights, junyanz: bool = False
                    ) -> UnetGenerator:
    """A ``UnetGenerator(cfg)`` holding ``weights``; ``CheckpointError`` naming ``path`` and,
    for junyanz files, the flags that would fit, when they do not load strictly."""
    hint_text = ""
    if junyanz and isinstance(weights, dict):
        # The hint is read off the file as it is: after dropping instance-norm statistics a
        # BatchNorm file would look like an instance-norm one.
        hint_text = hint(weights)
        weights = drop_instance_norm_stats(weights, cfg)
    arch = (f"a U-Net with ngf={cfg.ngf}, norm={cfg.norm}, image_size={cfg.image_size}, "
            f"channels {cfg.in_channels}->{cfg.out_channels}")
    return _load(UnetGenerator(cfg), path, weights, arch, hint_text)


def build_discriminator(path: Path, cfg: ModelConfig, weights) -> PatchDiscriminator:
    """A ``PatchDiscriminator(cfg)`` holding ``weights`` (p2p's or a junyanz ``*_net_D.pth``:
    the same layout as their ``NLayerDiscriminator``)."""
    hint_d = ""
    if isinstance(weights, dict) and hasattr(weights.get("model.0.weight"), "shape"):
        w = weights["model.0.weight"]
        hint_d = f"; the file looks like --ndf {w.shape[0]} ({w.shape[1]} input channels)"
    arch = (f"a PatchGAN with ndf={cfg.ndf}, norm={cfg.norm}, "
            f"{cfg.in_channels + cfg.out_channels} input channels")
    return _load(PatchDiscriminator(cfg), path, weights, arch, hint_d)


def _load(net: nn.Module, path: Path, weights, arch: str, hint_text: str) -> nn.Module:
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: weights are a {type(weights).__name__}, not a "
                              "state_dict")
    try:
        net.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: weights do not fit {arch} "
                              f"({_difference(net.state_dict(), weights)}){hint_text}") from None
    return net


def _difference(want: dict, got: dict) -> str:
    """What torch's load_state_dict error says, in a few words of our own (its message is
    many lines and ends mid-sentence when cut)."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shaped = [k for k in want if k in got and getattr(got[k], "shape", None) != want[k].shape]
    parts = [f"{len(v)} {what}, e.g. {v[0]}" for v, what in (
        (missing, "missing"), (unexpected, "unexpected"), (shaped, "of another shape")) if v]
    return "; ".join(parts) or "the weights are not tensors"

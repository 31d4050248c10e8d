"""Samples and their L1: how the generator does on fixed val images during training.

The generator runs as the paper tests it and as export's 'per-image' norm mode does: batch
norm on each image's own statistics, dropout off. Nothing here changes training state.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from p2p.runtime import color
from p2p.runtime.files import atomic_write


@contextlib.contextmanager
def per_image_norm(G: nn.Module):
    """Samples as export's 'per-image' mode and the paper's test time: batch norm uses the
    image's own statistics; dropout is off. Running statistics are left untouched and no RNG
    is drawn, so writing samples never changes the training trajectory."""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was = G.training
    G.train()
    for m in bns:
        m.track_running_stats = False
    for m in G.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m in bns:
            m.track_running_stats = True
        G.train(was)


def _to_rgb(x: torch.Tensor, L: torch.Tensor | None = None) -> np.ndarray:
    """CHW in [-1, 1] -> HWC uint8; with ``L`` given, ``x`` is ab and is shown in colour."""
    x = x.float().cpu().numpy().transpose(1, 2, 0)
    if L is not None:
        rgb = color.lab_to_rgb(color.model_to_lab(L.float().cpu().numpy().transpose(1, 2, 0), x))
        return (rgb * 255.0 + 0.5).astype(np.uint8)
    if x.shape[2] != 3:  # greyscale, Lab's L input, or N bands: the first 3, else the first
        x = x[..., :3] if x.shape[2] > 3 else np.repeat(x[..., :1], 3, axis=2)
    return ((x + 1.0) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)


def write_samples(G: nn.Module, samples: list, path: Path, lab: bool = False,
                  amp: bool = False) -> float:
    """Grid of input | output | target rows on fixed val images; returns their mean L1."""
    rows, l1 = [], []
    device = next(G.parameters()).device
    with per_image_norm(G), torch.autocast(device.type, enabled=amp):
        for inp, tgt in samples:  # one at a time: per-image statistics
            out = G(inp[None].to(device))[0].float()
            l1.append((out.cpu() - tgt).abs().mean().item())
            rows.append(np.concatenate([_to_rgb(inp), _to_rgb(out, inp if lab else None),
                                        _to_rgb(tgt, inp if lab else None)], axis=1))
    atomic_write(path, lambda tmp: Image.fromarray(np.concatenate(rows, 0)).save(tmp, "PNG"))
    return float(np.mean(l1))


def sample_metric(sample_ds) -> str:
    """The metrics.jsonl key of the samples' L1: val_L1 only when they are held out."""
    return "train_L1" if sample_ds.source == "train" else "val_L1"


def sample_line(t, samples: list, out: Path, log) -> None:
    """Write ``samples/step_N.png`` for the trainer ``t`` and log the samples' L1 under
    ``t.sample_metric``."""
    l1 = write_samples(t.dist.sample_generator(t), samples,
                       out / "samples" / f"step_{t.step:06d}.png",
                       t.task["color_space"] == "lab", t.cfg.amp)
    log.write({"step": t.step, "epoch": t.epoch, t.sample_metric: l1})


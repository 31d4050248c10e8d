"""Checkpoints: atomic save, safe load (``weights_only=True``), and the file's contract.

A p2p checkpoint is a plain dict (only tensors, numbers, strings, lists, dicts), so it loads
with ``torch.load(weights_only=True)`` and a file from a stranger can never run code:

    format          "p2p-checkpoint"
    format_version  1
    model           ModelConfig as a dict (rebuilds G and D)
    task            {"direction": "AtoB"|"BtoA", "color_space": "rgb"|"lab", "data": str}
    train           TrainConfig as a JSON-able dict
    step, epoch     ints: optimizer steps done, epochs completed
    generator, discriminator        state_dicts
    opt_g, opt_d, sched_g, sched_d  optimizer / LR scheduler state_dicts (resume only)
    rng             {"torch": ByteTensor, "python": list, "numpy": list, "cuda": [ByteTensor]}
                    (``rng_state()`` / ``set_rng_state()`` convert to and from these plain types;
                    "cuda" holds the training device's state only, or nothing off CUDA)
    world_size      processes that trained it (torchrun; absent: 1); a resume needs as many
    rng_ranks       under torchrun: every rank's ``rng`` dict, by rank (``rng`` is rank 0's)
"""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from p2p.runtime.files import atomic_write  # noqa: F401  (re-exported: trainer, export use it)
from p2p.runtime.errors import CheckpointError, one_line

FORMAT = "p2p-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(state: dict, path: Path) -> Path:
    """Write ``state`` atomically; a full disk is one P2PError line naming the file system
    (``files.atomic_write``), and the previous file at ``path`` is kept."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda tmp: _save(state, tmp))


def _save(state: dict, tmp: Path) -> None:
    # Through a Python file: torch's own writer turns a failed write (ENOSPC) into
    # RuntimeError "unexpected pos ..."; with a file object the OSError survives as the
    # RuntimeError's context, and is raised as what it is.
    with open(tmp, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def snapshot(latest: Path, step: int) -> Path:
    """A whole copy of ``latest`` as ``step_NNNNNN.pt`` beside it; atomic, so a kill mid-copy
    never leaves a torn snapshot."""
    return atomic_write(latest.with_name(f"step_{step:06d}.pt"),
                        lambda tmp: shutil.copyfile(latest, tmp))


def load_state(path: Path) -> dict:
    """Load any ``.pt``/``.pth`` dict safely; every failure is one ``CheckpointError`` line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (an interrupted copy?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses globals it does not know: exactly what a code-running pickle has.
        # Its first line is the same boilerplate for every failure, so pick the telling one;
        # without a GLOBAL the bytes were never a pickle of weights (random, cut short).
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        glob = next((ln for ln in lines if "GLOBAL" in ln), None)
        if glob is None:
            why = next((ln for ln in lines if ln.startswith(("Unsupported", "invalid"))),
                       lines[0])
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or "
                                  f"corrupt?): {why[:160]}") from None
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects that could run code, and p2p "
            f"only loads plain weights ({glob[:160]})"
        ) from None
    except Exception as e:  # noqa: BLE001 - what torch's unpickler raises on garbage is open:
        # RuntimeError, EOFError, BadZipFile, OSError, ValueError, and from the legacy format
        # KeyError ("hello world" as .pth) or struct.error (a pickle cut short)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or "
                              f"corrupt?): {one_line(e)[:200]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of weights")
    return state


def load_checkpoint(path: Path) -> dict:
    """Load a p2p checkpoint and check its contract (not a junyanz state_dict)."""
    return check_checkpoint(load_state(path), path)


def check_checkpoint(state: dict, path: Path) -> dict:
    """The contract check of ``load_checkpoint`` for a dict already loaded by ``load_state``."""
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a p2p checkpoint (no 'format: {FORMAT}' entry)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']} is newer "
                              f"than this p2p reads ({FORMAT_VERSION}); upgrade p2p")
    missing = [k for k in ("model", "task", "step", "generator") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: p2p checkpoint lacks {', '.join(missing)}")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: checkpoint step {step!r} is not a whole number >= 0")
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: checkpoint 'model' is not a dict of the model config")
    return state


def rng_state(device: torch.device | None = None) -> dict:
    """Every RNG a training step may draw from, as plain types (weights_only-loadable).

    Of the CUDA generators only the training ``device``'s: a job resumed where fewer GPUs
    are visible (or another one) must still load it."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    on_cuda = device is not None and device.type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "cuda": [torch.cuda.get_rng_state(device)] if on_cuda else [],
    }


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Inverse of ``rng_state``; the CUDA state goes to ``device`` only (when it is CUDA).

    Checkpoints written before this rule hold one state per visible GPU; their first is the
    training device's (p2p trained on ``cuda``, the current device 0), so it is the one
    restored, and a checkpoint holding more states than this machine has GPUs still loads.
    """
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda") or []
    if cuda and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda[0], device)

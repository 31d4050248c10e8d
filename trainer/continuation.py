"""Runs that start from other weights (fine-tuning) or go on past their schedule.

``--init-from``: a new run whose generator (and discriminator, when there is one) starts
from a p2p checkpoint or a junyanz ``*_net_G.pth`` (+ ``*_net_D.pth``); optimizers, LR
schedule, step and epoch start fresh, as in the reference's fine-tuning recipe
(``--continue_train`` with ``--epoch_count 1``). The run's config records the source and
its SHA-256.

``--resume`` with other ``--epochs``/``--epochs-decay``: the LR is a function of the epoch
(``train.lr_lambda``, the reference's LambdaLR rule); a run that goes on under a longer
schedule takes its LR from the new rule from the current epoch on, exactly as a run
started with that schedule would have at the same epoch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from p2p.runtime.errors import CheckpointError
from p2p.runtime.host import file_sha256
from p2p.trainer.checkpoint import check_checkpoint, load_state
from p2p.trainer.models import ModelConfig
from p2p.trainer.reference import (JUNYANZ_KEY, architecture, build_discriminator,
                                   build_generator, is_junyanz)

ARCH = ("in_channels", "out_channels", "image_size", "ngf", "ndf", "norm")


def init_from(G, D, model_cfg: ModelConfig, g_path: str, d_path: str | None = None) -> dict:
    """Load starting weights into the networks ``G`` and ``D`` (in place).

    ``g_path``: a p2p checkpoint (its discriminator is used too, unless ``d_path`` is
    given) or a junyanz generator state_dict; ``d_path``: a junyanz ``*_net_D.pth`` or a p2p
    checkpoint. Returns what the run config records: paths, SHA-256s, the source's format
    and step. Raises ``CheckpointError`` naming the file and, when the architecture flags do
    not fit, the flags that would.
    """
    g_path = Path(g_path)
    state = load_state(g_path)
    if is_junyanz(state):
        weights_g, weights_d, step, kind = state, None, 0, "junyanz"
    elif "format" in state:
        state = check_checkpoint(state, g_path)
        _same_architecture(g_path, state, model_cfg)
        weights_g, weights_d, step, kind = (state["generator"], state.get("discriminator"),
                                            int(state["step"]), "p2p")
    else:
        raise CheckpointError(f"{g_path}: neither a p2p checkpoint nor a pix2pix generator "
                              f"state_dict (no '{JUNYANZ_KEY}' key)")
    record = {"generator": str(g_path), "generator_sha256": file_sha256(g_path),
              "format": kind, "step": step, "discriminator": None}
    G.load_state_dict(build_generator(g_path, model_cfg, weights_g,
                                      junyanz=kind == "junyanz").state_dict())
    if d_path:
        d_state = load_state(Path(d_path))
        if "format" in d_state:
            d_state = check_checkpoint(d_state, Path(d_path))
            _same_architecture(Path(d_path), d_state, model_cfg)
            d_state = d_state.get("discriminator")
        weights_d = d_state
        record.update(discriminator=str(d_path), discriminator_sha256=file_sha256(Path(d_path)))
    elif weights_d is not None:
        record["discriminator"] = str(g_path)
    if weights_d is not None:
        D.load_state_dict(build_discriminator(Path(d_path or g_path), model_cfg,
                                              weights_d).state_dict())
    return record


def recorded_flags(g_path: str, d_path: str | None = None) -> dict:
    """The architecture flags (``ngf``, ``ndf``, ``image_size``, ``load_size``, ``norm``)
    that the --init-from files record or their weights show: a p2p checkpoint's model and
    train config; a junyanz generator's shapes (``reference.architecture``) and its D's
    first layer. Flags a file cannot tell are left out. Raises ``CheckpointError`` for a
    file that is neither (as ``init_from`` would)."""
    state = load_state(Path(g_path))
    if "format" in state:
        state = check_checkpoint(state, Path(g_path))
        model, train = state.get("model") or {}, state.get("train") or {}
        found = {k: model[k] for k in ("ngf", "ndf", "image_size", "norm") if k in model}
        if "load_size" in train:
            found["load_size"] = train["load_size"]
    elif is_junyanz(state):
        arch = architecture(state) or {}
        found = {k: arch[k] for k in ("ngf", "image_size", "norm") if k in arch}
    else:
        return {}
    if d_path and "ndf" not in found:
        d_state = load_state(Path(d_path))
        first = d_state.get("model.0.weight")
        if first is not None and getattr(first, "ndim", 0) == 4:
            found["ndf"] = int(first.shape[0])
    if "image_size" in found and "load_size" not in found:
        # The paper's jitter: 286 for 256, the same ratio at other sizes.
        found["load_size"] = round(found["image_size"] * 286 / 256)
    return found


def _same_architecture(path: Path, state: dict, model_cfg: ModelConfig) -> None:
    saved = state.get("model") if isinstance(state.get("model"), dict) else {}
    mine = asdict(model_cfg)
    diff = [k for k in ARCH if k in saved and saved[k] != mine[k]]
    if diff:
        want = " ".join(f"--{k.replace('_', '-')} {saved[k]}" for k in diff
                        if k not in ("in_channels", "out_channels"))
        raise CheckpointError(
            f"{path}: records {', '.join(f'{k}={saved[k]}' for k in diff)}, but this run "
            f"asks {', '.join(f'{k}={mine[k]}' for k in diff)}; pass {want or 'its colour setup'}")


def continue_schedule(schedulers) -> None:
    """Set each optimizer's LR for the current epoch from its scheduler's rule (after a
    resume, once the scheduler state is loaded).

    A restored LambdaLR keeps the LR the old schedule computed at its last ``step()``; when
    the schedule changed (longer ``--epochs``/``--epochs-decay``), the current epoch must
    run at the new rule's value, not the old one (a finished run's is ~0). The rule itself
    is never in the state (LambdaLR does not save functions), so it is this run's. When
    nothing changed this rewrites the same value.
    """
    for sched in schedulers:
        groups = sched.optimizer.param_groups
        for group, base, rule in zip(groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * rule(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in groups]


def nothing_left(step: int, total: int, epochs: int, epochs_decay: int, max_steps: int,
                 schedule_steps: int) -> str:
    """Why a resumed run has nothing to do, and what would give it more."""
    if max_steps and max_steps < schedule_steps:
        more = f"raise --max-steps (the schedule has {schedule_steps} steps)"
    else:
        more = (f"to train further, --resume with a larger --epochs or --epochs-decay "
                f"(now {epochs} + {epochs_decay}); the LR rule goes on from this epoch")
    return f"already at step {step} of {total}; nothing to do ({more})"

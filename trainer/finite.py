"""A run that goes non-finite stops, and never saves what it broke.

With a too-high learning rate (``--lr 1e30``) the losses are NaN from the second step and the
weights follow; a loop that only logs would save NaN weights as ``latest.pt`` and end "done",
exit 0. ``FiniteGuard`` records, on the device and without a host sync, the first step whose
losses were NaN or Inf; ``check`` (one sync, run only where the loop syncs anyway: before a
log line, a sample or a checkpoint) stops the run with one line naming that step and the
losses, and refuses weights that went non-finite while the losses were still finite (the
update of the step that diverged). So every checkpoint on disk holds finite weights and
``--resume`` starts from the last one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from p2p.runtime.errors import P2PError


class TrainingDiverged(P2PError):
    """Losses or weights went NaN or Inf; the run stopped without saving them."""


def finite(net: nn.Module) -> bool:
    """Every floating-point parameter and buffer (BatchNorm statistics too) is finite."""
    values = [v for v in net.state_dict().values() if v.is_floating_point()]
    return bool(torch.stack([torch.isfinite(v).all() for v in values]).all()) if values else True


class FiniteGuard:
    """``record`` each step's losses (device tensors, no sync); ``check`` at sync points."""

    def __init__(self, names: tuple[str, ...], device, saved_step: int | None):
        self.names = names
        self.first = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet
        self.losses = torch.zeros(len(names), device=device)  # the losses of that step
        self.saved_step = saved_step  # the step of the checkpoint on disk (None: none yet)

    def record(self, losses: torch.Tensor, step: int) -> None:
        new = (self.first == 0) & ~torch.isfinite(losses).all()
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.losses = torch.where(new, losses, self.losses)

    def check(self, step: int, nets: dict[str, nn.Module], checkpoint: Path, job) -> None:
        """TrainingDiverged (one line) when a recorded loss or any weight is non-finite;
        ``job``: the ``distributed.Job``, so every rank of a torchrun job stops together and
        rank 0 alone reports it."""
        first = int(self.first)
        broken = [name for name, net in nets.items() if not finite(net)] if not first else []
        if not job.any(bool(first or broken)):
            return
        if first:
            bad = [f"{n} {v:g}" for n, v in zip(self.names, self.losses.tolist())
                   if not torch.isfinite(torch.tensor(v))]
            what = f"step {first}: non-finite loss ({', '.join(bad)})"
        elif broken:
            what = f"step {step}: the {' and '.join(broken)} weights became NaN or Inf"
        else:
            what = f"step {step}: another rank's losses or weights became NaN or Inf"
        kept = (f"the last finite checkpoint {checkpoint} (step {self.saved_step}) is kept; "
                "--resume continues from it" if self.saved_step is not None
                else "no checkpoint had been saved")
        raise job.shared(TrainingDiverged(f"{what}: training diverged (too high --lr?) and "
                                          f"stopped; nothing non-finite was saved; {kept}"))

"""Data-parallel training under ``torchrun``: DistributedDataParallel on CPU (gloo) or CUDA (nccl).

``torchrun --nproc_per_node N $(which p2p-train) ...`` starts N copies of p2p-train. Each one
reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the environment torchrun
sets (``init_process_group``'s ``env://`` rendezvous) and becomes one rank of the job:

- each rank trains on its own shard of every epoch (``data.EpochSampler(rank, world)``), so
  the global batch is N x ``--batch-size``; DistributedDataParallel averages the generator's
  and the discriminator's gradients over the ranks;
- only rank 0 writes the run folder; checkpoints hold the unwrapped modules' state_dicts
  (export, resume and single-process use read them unchanged), every rank's RNG state and the
  world size, which a ``--resume`` must match;
- ``--norm batch`` keeps per-process statistics; ``--norm sync_batch`` converts the batch norms
  to torch's SyncBatchNorm (CUDA only), recorded in the checkpoint's model config as ``batch``.

Agreement: ranks must run the same collectives in the same order, so every decision that may
differ between ranks goes through a small collective on the CPU (gloo; a separate group under
NCCL, so it never waits on the GPU): setup errors (raised on every rank, reported once by
rank 0), the image check (each rank decodes its share), and a stop request (SIGTERM, Ctrl-C:
every rank stops after the same step and rank 0 saves once). A rank that dies cannot agree:
its peers' next collective fails (gloo notices the closed connection at once) and torchrun,
which watches its workers every 0.1 s, sends the others SIGTERM, then SIGKILL after 30 s.
"""

from __future__ import annotations

import contextlib
import inspect
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from p2p.runtime.errors import CheckpointError, P2PError, ProviderError, one_line
from p2p.trainer import checkpoint, data
from p2p.trainer.models import NORMS, UnetGenerator

# The trainer's --norm: the models' norms plus batch norm synchronised over the ranks.
TRAIN_NORMS = (*NORMS, "sync_batch")


def model_norm(norm: str) -> str:
    """The architecture a --norm builds: sync_batch is batch norm whose statistics are
    computed over all ranks while training; its weights are batch norm's."""
    return "batch" if norm == "sync_batch" else norm


class JobError(P2PError):
    """An error every rank of a torchrun job raised alike; ``report`` is True on rank 0 only
    (the CLI prints it there and exits 1 quietly on the others)."""

    def __init__(self, message: str, report: bool = True):
        super().__init__(message)
        self.report = report


class Job:
    """This process's place in the job: one process (``enabled`` False), or a torchrun rank.

    Every method is a collective under torchrun (all ranks call it, in the same order) and a
    plain call in a single process.
    """

    def __init__(self, device: torch.device | None = None, rank: int = 0, world: int = 1,
                 enabled: bool = False, control=None):
        self.device, self.rank, self.world, self.enabled = device, rank, world, enabled
        self.control = control  # the gloo group for agreement (None: the default group)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def announce(self, batch_size: int) -> None:
        if self.enabled and self.main:
            print(f"torchrun: {self.world} processes on {self.device.type}, global batch "
                  f"{self.world} x {batch_size} = {self.world * batch_size} (learning rate "
                  "unchanged)")

    def shared(self, error: P2PError) -> P2PError:
        """``error``, raised alike on every rank: rank 0 reports it."""
        return JobError(str(error), self.main) if self.enabled else error

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), by rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the ranks (a new tensor on x's device; x unchanged)."""
        if not self.enabled:
            return x.clone()
        y = x.clone()
        dist.all_reduce(y)  # SUM: gloo has no AVG
        return y / self.world

    def agree(self, fn, *args):
        """``fn(*args)`` on this rank; if it raised a P2PError on any rank, every rank raises
        the first one (rank 0 reports it, naming the rank it came from). ``fn`` must not call
        collectives itself: a rank that failed before them would leave the others waiting."""
        if not self.enabled:
            return fn(*args)
        try:
            result, why = fn(*args), None
        except P2PError as e:
            result, why = None, str(e)
        for rank, msg in enumerate(self.gather(why)):
            if msg is not None:
                raise JobError(msg if rank == 0 else f"rank {rank}: {msg}", self.main)
        return result

    def main_first(self, on_main, on_others):
        """``on_main()`` on rank 0 (a download, run-folder changes), then ``on_others()`` on
        the other ranks once rank 0 succeeded; each agreed. Returns this rank's result."""
        first = self.agree(on_main if self.main else _nothing)
        rest = self.agree(_nothing if self.main else on_others)
        return first if self.main else rest

    def check_images(self, ds: data.PairDataset, samples: data.PairDataset) -> dict[str, str]:
        """``data.check_images`` on the training and sample sets, each rank decoding its
        share; returns the data's depths (``data.data_depths``)."""
        if not self.enabled:
            return data.check_images(ds, samples)
        items = data.all_items(ds, samples)
        mine = self.agree(data.image_problems, items[self.rank::self.world], ds)
        shares = self.gather(mine)
        found = [shares[i % self.world][i // self.world] for i in range(len(items))]
        self.agree(data.raise_problems, found, len(items))
        return data.data_depths(found)

    def check_flags(self, norm: str) -> None:
        # Under an initialised process group SyncBatchNorm refuses CPU input even for one rank.
        if self.enabled and norm == "sync_batch" and self.device.type != "cuda":
            raise ProviderError(f"--norm sync_batch: torch's SyncBatchNorm synchronises CUDA "
                                f"tensors only, and this job runs on {self.device.type}; use "
                                "--norm batch (per-process statistics) or --norm instance")

    def seed(self, seed: int) -> None:
        """Under torchrun, each rank its own torch RNG stream (dropout masks), from (seed,
        rank); the networks were built before, from ``seed`` alone, so they start equal."""
        if self.enabled:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    def resume_state(self, state: dict, path) -> dict:
        """The checkpoint as this rank resumes it: same world size, its own RNG state."""
        saved = int(state.get("world_size", 1))
        if saved != self.world:
            raise CheckpointError(
                f"{path}: saved by a job of {saved} process(es) and this one has {self.world}; "
                "resume with as many (the global batch and each rank's shard depend on it)")
        if "rng_ranks" in state:
            state = {**state, "rng": state["rng_ranks"][self.rank]}
        return state

    def wrap(self, t) -> None:
        """Make ``t`` (a ``train.Trainer``) train through DDP; a no-op in one process.

        ``t.G`` and ``t.D`` stay the unwrapped modules (their state_dicts are what checkpoints
        hold); ``train_step`` calls ``t.G_train`` / ``t.D_train``. The discriminator runs twice
        before its backward (fake and real pairs) and once frozen (requires_grad False) in the
        generator's step: each parameter's gradient hook still fires once per backward, and
        none fires while frozen, so DDP needs neither find_unused_parameters nor a static
        graph. Buffers (batch-norm running statistics) are not broadcast on every forward:
        with per-process statistics they stay each rank's own, rank 0's are saved, and they
        play no part in training (batch statistics) or samples (per-image statistics).
        """
        t.dist = self
        if not self.enabled:
            return
        if t.cfg.norm == "sync_batch":  # same Parameters and buffers, new module classes
            t.G = nn.SyncBatchNorm.convert_sync_batchnorm(t.G)
            t.D = nn.SyncBatchNorm.convert_sync_batchnorm(t.D)
        ids = [self.device.index] if self.device.type == "cuda" else None
        t.G_train = DDP(t.G, device_ids=ids, **_NO_BUFFER_SYNC)
        t.D_train = DDP(t.D, device_ids=ids, **_NO_BUFFER_SYNC)

    def sample_generator(self, t) -> nn.Module:
        """The generator rank 0 runs alone for samples. A SyncBatchNorm in train mode (samples
        use per-image statistics) would wait for the other ranks, so then a plain copy."""
        if self.world > 1 and any(isinstance(m, nn.SyncBatchNorm) for m in t.G.modules()):
            G = UnetGenerator(t.model_cfg).to(t.device)
            G.load_state_dict(t.G.state_dict())
            return G
        return t.G

    def checkpoint_state(self, t) -> dict | None:
        """What rank 0 saves: ``t.state_dict()`` plus, under torchrun, every rank's RNG state,
        the loss window averaged over the ranks (what the next log line averages) and the
        world size. Every rank calls it at the same step; None except on rank 0."""
        if not self.enabled:
            return t.state_dict()
        rngs = self.gather(checkpoint.rng_state(t.device))
        window = self.mean(t.window).cpu()
        if not self.main:
            return None
        return {**t.state_dict(), "rng_ranks": rngs, "world_size": self.world,
                "window": {"sum": window, "n": t.window_n}}


def _nothing():
    return None


# torch 2.13 renamed broadcast_buffers to forward_sync_buffers (the old name warns).
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})

SINGLE = Job()


def launched() -> bool:
    """Started by torchrun (or any launcher that sets env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextlib.contextmanager
def job(device: torch.device):
    """The job this process belongs to, for the duration of training.

    Outside torchrun: a single-process ``Job`` on ``device``. Under torchrun: joins the
    process group (nccl on CUDA, each rank on GPU ``LOCAL_RANK``; gloo on the CPU) and, on the
    way out, turns what one rank alone raised into one line naming the rank.
    """
    if not launched():
        yield Job(device)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ProviderError(f"rank {rank}: LOCAL_RANK {local}, but only "
                                f"{torch.cuda.device_count()} CUDA device(s) are visible; start "
                                "at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ProviderError(f"--device {device.type}: torchrun training runs on cuda (nccl) "
                            "or cpu (gloo)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
        # Agreement runs on the CPU: under NCCL it gets its own gloo group.
        control = dist.new_group(backend="gloo") if backend == "nccl" else None
    except (dist.DistError, RuntimeError, ValueError) as e:
        raise ProviderError(f"rank {rank}: cannot join the torchrun job ({backend}): "
                            f"{one_line(e)[:200]}") from None
    env = Job(device, rank, world, True, control)
    try:
        yield env
    except JobError:
        dist.destroy_process_group()
        raise
    except P2PError as e:  # this rank alone: say which one
        raise type(e)(f"rank {rank}: {e}") from None
    except dist.DistError as e:  # a peer died or left: its own error says why
        raise P2PError(f"rank {rank}: stopped: lost contact with another rank of the job, "
                       f"which failed or was killed (its error is above): {one_line(e)[:200]}"
                       ) from None
    except RuntimeError as e:
        # Out of memory, or a collective inside DDP's backward that a dead peer broke (gloo
        # raises a plain RuntimeError there): one line per rank, not N interleaved tracebacks.
        raise P2PError(f"rank {rank}: stopped: {type(e).__name__}: {one_line(e)[:200]}") from None
    dist.destroy_process_group()

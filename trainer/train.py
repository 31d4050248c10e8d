"""The pix2pix training loop: conditional GAN + L1, exactly the paper's recipe.

    D:  0.5 * (BCE(D(x, y), 1) + BCE(D(x, G(x)), 0))           (halved: D learns slower)
    G:  BCE(D(x, G(x)), 1) + l1_weight * |G(x) - y|_1           (l1_weight = 100)
    Adam(lr 2e-4, beta1 0.5); batch 1; constant LR for ``epochs``, then linear decay
    towards zero over ``epochs_decay`` (the reference's LambdaLR formula).

A run folder holds config.json, checkpoints/latest.pt (+ step_NNNNNN.pt snapshots),
metrics.jsonl, samples/step_NNNNNN.png and, when tensorboard is installed, tensorboard/.
``--resume`` restores every piece of state (weights, BN statistics, Adam moments, LR
schedule, RNGs, position in the epoch), so it reproduces an uninterrupted run's losses.
Under torchrun the same loop runs data-parallel: see trainer/distributed.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from p2p.runtime.errors import CheckpointError, DataError, P2PError, one_line
from p2p.trainer import checkpoint, data, datasets, device as devices, distributed
from p2p.trainer.continuation import continue_schedule, init_from, nothing_left
from p2p.trainer.cpu_convs import use_matmul_convs
from p2p.trainer.finite import FiniteGuard
from p2p.trainer.models import ModelConfig, PatchDiscriminator, UnetGenerator, init_weights
from p2p.trainer.rundata import recorded_task
from p2p.trainer.rundir import NullLog, RunLog, lock_run, prepare_output, previous_run
from p2p.trainer.samples import sample_line, sample_metric

LOSSES = ("loss_G_GAN", "loss_G_L1", "loss_D_real", "loss_D_fake")


@dataclass(frozen=True)
class TrainConfig:
    data: str | None = None  # folder (A|B side by side, or colour images) or a classic name
    data_a: str | None = None  # or two folders of same-named images
    data_b: str | None = None
    lab_colorization: bool = False
    direction: str = "AtoB"
    in_channels: int = 3  # bands of the input images (1 greyscale, 3 RGB, N multi-band)
    out_channels: int = 3  # bands of the target images
    output: str = "runs/run"
    image_size: int = 256
    load_size: int = 286
    flip: bool = True
    ngf: int = 64
    ndf: int = 64
    norm: str = "batch"
    l1_weight: float = 100.0
    lr: float = 2e-4
    beta1: float = 0.5
    batch_size: int = 1
    epochs: int = 100  # at the initial LR
    epochs_decay: int = 100  # then linear decay to zero
    max_steps: int = 0  # stop after this many optimizer steps in total (0: full schedule)
    init_from: str | None = None  # fine-tune: starting G (+D) from a checkpoint or *_net_G.pth
    init_from_d: str | None = None  # a junyanz *_net_D.pth to start D from
    seed: int = 0
    device: str = "auto"
    amp: bool = False  # mixed precision, CUDA only
    tf32: bool = False  # TensorFloat-32 convs/matmuls on CUDA; off: FP32 is IEEE FP32
    workers: int = 1
    threads: int = 0  # torch intra-op threads (0: torch's default)
    log_every: int = 10  # metrics.jsonl: means over this many steps
    sample_every: int = 500
    num_samples: int = 4
    save_every: int = 2000  # checkpoints/latest.pt
    snapshot_every: int = 20000  # checkpoints/step_NNNNNN.pt, kept (0: none)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


# What defines the training trajectory: a resume must not change any of these.
RECIPE = ("data", "data_a", "data_b", "lab_colorization", "direction", "in_channels",
          "out_channels", "image_size", "load_size", "flip", "ngf", "ndf", "norm", "l1_weight",
          "lr", "beta1", "batch_size", "seed")  # epochs(_decay) may grow: continuation
# Recipe fields added later, with the value runs written before them had.
RECIPE_DEFAULTS = {"in_channels": 3, "out_channels": 3}


def lr_lambda(epochs: int, epochs_decay: int):
    """The reference's rule: factor 1 for ``epochs`` epochs, then down by 1/(decay+1) each."""
    def rule(epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)
    return rule


class Trainer:
    """Networks, optimizers, schedules and counters: everything a checkpoint holds."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, task: dict, device):
        self.cfg, self.model_cfg, self.task, self.device = cfg, model_cfg, task, device
        self.G = init_weights(UnetGenerator(model_cfg)).to(device)
        self.D = init_weights(PatchDiscriminator(model_cfg)).to(device)
        if device.type == "cpu":  # same function, faster inner layers (see cpu_convs)
            use_matmul_convs(self.G)
        # fused Adam: one kernel per step instead of a dozen passes over 57M parameters.
        fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas, **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas, **fused)
        rule = lr_lambda(cfg.epochs, cfg.epochs_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=cfg.amp)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=cfg.amp)
        self.bce, self.l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
        self.step = self.epoch = 0
        self.train_images = 0  # the training set's size: a resume must find the same
        self.schedule_epochs = cfg.epochs + cfg.epochs_decay
        self.window = torch.zeros(len(LOSSES), device=device)  # loss sums since the last log
        self.window_n = 0
        self.stop = False  # agreed by every rank (distributed.Job.any) after each step
        self.stop_requested = False  # set by SIGINT/SIGTERM in this process
        # What train_step calls: G and D, or their DDP wrappers under torchrun (Job.wrap).
        self.G_train, self.D_train = self.G, self.D
        self.dist = distributed.SINGLE
        self.sample_metric = "val_L1"  # train_L1 when the samples are training images

    def state_dict(self) -> dict:
        return {
            "model": asdict(self.model_cfg), "task": dict(self.task), "train": asdict(self.cfg),
            "step": self.step, "epoch": self.epoch, "train_images": self.train_images,
            "generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "rng": checkpoint.rng_state(self.device),
            "window": {"sum": self.window.cpu(), "n": self.window_n},
        }

    def load_state_dict(self, state: dict, path: Path, data_path: str | None = None) -> None:
        """Resume from ``state``: CheckpointError when it is not a full training state or
        the recipe differs. ``data_path``: the folder the run's config.json recorded, for
        checkpoints of earlier versions that record ``--data`` only as typed."""
        missing = [k for k in ("discriminator", "opt_g", "opt_d", "sched_g", "sched_d", "rng")
                   if k not in state]
        if missing:
            raise CheckpointError(f"{path}: cannot resume: no {', '.join(missing)} "
                                  "(a weights-only file?)")
        saved = state.get("train", {})
        mine = asdict(self.cfg)
        # The data compare as the folders they resolve to (recorded absolute in ``task``),
        # not as typed: 'd', './d' and '/abs/d' are one folder, 'd' from elsewhere another.
        theirs = dict(state.get("task") or {})
        if data_path and not (theirs.get("data_root") or theirs.get("data_a")) \
                and saved.get("data") and "|" not in str(saved["data"]):
            theirs["data_root"] = data_path  # an earlier version's run: its config's folder
        where = [k for k in ("data_root", "data_a", "data_b") if theirs.get(k)]
        diff = [f"{k}={saved.get(k)!r} (asked {mine[k]!r})" for k in RECIPE
                if not (where and k in ("data", "data_a", "data_b"))
                and saved.get(k, RECIPE_DEFAULTS.get(k)) != mine[k]]
        diff += [f"{k}={theirs[k]!r} (asked {self.task.get(k)!r})" for k in where
                 if theirs[k] != self.task.get(k)]
        if diff:
            raise CheckpointError(f"{path}: this run was trained with {'; '.join(diff)}; "
                                  "drop those flags or use another --output")
        try:
            self.G.load_state_dict(state["generator"])
            self.D.load_state_dict(state["discriminator"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit this model: "
                                  f"{one_line(e)[:200]}") from None
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        continue_schedule((self.sched_g, self.sched_d))
        if self.cfg.amp:  # a run saved without --amp has empty scaler states: keep fresh ones
            for scaler, key in ((self.scaler_g, "scaler_g"), (self.scaler_d, "scaler_d")):
                if state.get(key):
                    scaler.load_state_dict(state[key])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        window = state.get("window", {"sum": torch.zeros(len(LOSSES)), "n": 0})
        self.window, self.window_n = window["sum"].to(self.device), int(window["n"])
        checkpoint.set_rng_state(state["rng"], self.device)


def train_step(t: Trainer, real_a: torch.Tensor, real_b: torch.Tensor) -> torch.Tensor:
    """One D update then one G update on a batch; returns the 4 losses (no host sync)."""
    amp = torch.autocast(t.device.type, enabled=t.cfg.amp)
    with amp:
        fake_b = t.G_train(real_a)
    # Discriminator: real pairs -> 1, generated pairs -> 0; G is not updated here.
    t.D.requires_grad_(True)
    t.opt_d.zero_grad(set_to_none=True)
    with amp:
        pred_fake = t.D_train(torch.cat([real_a, fake_b.detach()], 1))
        pred_real = t.D_train(torch.cat([real_a, real_b], 1))
        loss_d_fake = t.bce(pred_fake, torch.zeros_like(pred_fake))
        loss_d_real = t.bce(pred_real, torch.ones_like(pred_real))
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
    t.scaler_d.scale(loss_d).backward()
    t.scaler_d.step(t.opt_d)
    t.scaler_d.update()
    # Generator: fool the (just updated, now frozen) D and stay close to the target in L1.
    t.D.requires_grad_(False)
    t.opt_g.zero_grad(set_to_none=True)
    with amp:
        pred_fake = t.D_train(torch.cat([real_a, fake_b], 1))
        loss_g_gan = t.bce(pred_fake, torch.ones_like(pred_fake))
        loss_g_l1 = t.l1(fake_b, real_b)
        loss_g = loss_g_gan + t.cfg.l1_weight * loss_g_l1
    t.scaler_g.scale(loss_g).backward()
    t.scaler_g.step(t.opt_g)
    t.scaler_g.update()
    return torch.stack([loss_g_gan, loss_g_l1, loss_d_real, loss_d_fake]).detach().float()


def train_one_epoch(t: Trainer, loader, steps_per_epoch: int, total: int, out: Path,
                    samples: list, log: RunLog, bar, guard: FiniteGuard) -> None:
    cfg = t.cfg
    latest = out / "checkpoints" / "latest.pt"
    for real_a, real_b in data.batches(loader):
        losses = train_step(t, real_a.to(t.device, non_blocking=True),
                            real_b.to(t.device, non_blocking=True))
        t.step += 1
        t.window += losses
        t.window_n += 1
        guard.record(losses, t.step)
        t.stop = t.dist.any(t.stop_requested) or t.stop  # every rank stops after this step
        bar.update(1)
        last = t.step >= total
        log_due = (t.step % cfg.log_every == 0 or last
                   or t.step == steps_per_epoch * t.schedule_epochs)
        done = last or t.stop
        snapshot = cfg.snapshot_every and t.step % cfg.snapshot_every == 0
        save_due = done or snapshot or t.step % cfg.save_every == 0
        sample_due = cfg.sample_every and (t.step % cfg.sample_every == 0 or last)
        if log_due or save_due or sample_due:
            guard.check(t.step, {"generator": t.G, "discriminator": t.D}, latest, t.dist)
        # The last step is logged even mid-window; a --max-steps stop keeps its partial
        # window in the checkpoint, so a --resume's next line covers the same steps as an
        # uninterrupted run's.
        if log_due:
            now = time.perf_counter()
            means = (t.dist.mean(t.window) / t.window_n).tolist()  # the one host sync per log
            rec = {"step": t.step, "epoch": t.epoch, **dict(zip(LOSSES, means)),
                   "lr": t.opt_g.param_groups[0]["lr"],
                   "images_per_s": t.window_n * cfg.batch_size * t.dist.world
                   / max(now - t.tick, 1e-9)}
            log.write(rec)
            bar.set_postfix(G_GAN=f"{means[0]:.3f}", G_L1=f"{means[1]:.3f}",
                            D_real=f"{means[2]:.3f}", D_fake=f"{means[3]:.3f}")
            if t.step % cfg.log_every == 0 or t.step == steps_per_epoch * t.schedule_epochs:
                t.window.zero_()
                t.window_n, t.tick = 0, now
        if sample_due and t.dist.main:  # (before the epoch moves on: the loss line's epoch)
            sample_line(t, samples, out, log)
        if t.step % steps_per_epoch == 0:  # end of epoch: the LR schedule moves per epoch
            t.sched_g.step()
            t.sched_d.step()
            t.epoch += 1
        if save_due:
            state = t.dist.checkpoint_state(t)  # under torchrun: every rank, rank 0 saves
            if state is not None:
                checkpoint.save_checkpoint(state, latest)
            guard.saved_step = t.step
        if snapshot and t.dist.main:
            checkpoint.snapshot(latest, t.step)
        if done:
            return


def fit(t: Trainer, train_ds, sample_ds, out: Path, begin=lambda: None) -> None:
    """Train ``t`` to the end of its schedule (or ``--max-steps``); ``begin()`` runs once it
    is known that there is something to train."""
    cfg = t.cfg
    sampler = data.EpochSampler(len(train_ds), cfg.seed, t.dist.rank, t.dist.world)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                        pin_memory=t.device.type == "cuda",
                        worker_init_fn=data.leave_stops_to_the_trainer,
                        # Its own generator: each iter() would otherwise draw a worker base
                        # seed from the global RNG, which dropout uses, and break --resume.
                        generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = math.ceil(sampler.shard / cfg.batch_size)
    schedule_steps = (cfg.epochs + cfg.epochs_decay) * steps_per_epoch
    total = min(schedule_steps, cfg.max_steps) if cfg.max_steps else schedule_steps
    samples = [sample_ds[i] for i in range(min(cfg.num_samples, len(sample_ds)))]
    t.sample_metric = sample_metric(sample_ds)
    log = RunLog(out, t.step) if t.dist.main else NullLog()  # only rank 0 writes
    if t.step == 0 and cfg.sample_every and t.dist.main:
        sample_line(t, samples, out, log)
    if t.step >= total:
        if t.dist.main:
            print(f"{out}: " + nothing_left(t.step, total, cfg.epochs, cfg.epochs_decay,
                                            cfg.max_steps, schedule_steps))
        log.close()
        return
    begin()

    pid = os.getpid()

    def request_stop(signum, frame):  # finish the step, save, then stop; twice = now
        if os.getpid() != pid:  # a forked DataLoader worker inherited this handler
            return
        if t.stop_requested:
            raise KeyboardInterrupt
        t.stop_requested = True
        if t.dist.main:
            tqdm.write("stopping after this step (Ctrl-C again to abort without saving)")

    try:  # SIGTERM too: schedulers (SLURM, Kubernetes, systemd) send it before SIGKILL
        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: Ctrl-C cannot reach us anyway
        previous = {}
    bar = tqdm(total=total, initial=t.step, unit="step",
               disable=not (cfg.progress and t.dist.main),
               dynamic_ncols=True, mininterval=1.0)
    t.tick = time.perf_counter()  # images/s: wall time per log window, data and all
    guard = FiniteGuard(LOSSES, t.device, t.step or None)  # step > 0: resumed from latest.pt
    try:
        while t.step < total and not t.stop:
            # Resume lands mid-epoch: skip the samples this epoch already consumed.
            sampler.epoch = t.epoch
            at = t.step - t.epoch * steps_per_epoch
            if not 0 <= at < steps_per_epoch:  # a resume on a data set of another size
                raise DataError(f"{out}: step {t.step} is not in epoch {t.epoch} of "
                                f"{steps_per_epoch} steps: the run's data no longer holds "
                                "the pairs it was trained on; restore them, or start a new run "
                                "from its weights with --init-from")
            sampler.start = at * cfg.batch_size
            train_one_epoch(t, loader, steps_per_epoch, total, out, samples, log, bar, guard)
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        bar.close()
        log.close()
    where = out / "checkpoints" / "latest.pt"
    if t.stop:
        raise t.dist.shared(P2PError(f"interrupted at step {t.step}; saved {where}; continue "
                                     "with --resume"))
    if t.dist.main:
        print(f"done: step {t.step}, epoch {t.epoch}; checkpoint {where}")


def main(cfg: TrainConfig) -> Trainer:
    device = devices.resolve(cfg.device, cfg.amp)
    devices.configure(device, cfg.tf32)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed.job(device) as env:  # one process, or one rank of a torchrun job
        return run(cfg, env)


def _check_flags(cfg: TrainConfig, env: distributed.Job) -> None:
    # Before the run folder is made: a bad value is one line, and leaves nothing behind.
    if not (0 <= cfg.lr < float("inf")):  # (0: the weights stay as they are)
        raise DataError(f"--lr {cfg.lr}: must be a number >= 0 (the paper: 0.0002)")
    if not (0 <= cfg.beta1 < 1):
        raise DataError(f"--beta1 {cfg.beta1}: must be in [0, 1) (the paper: 0.5)")
    if not cfg.resume and cfg.epochs + cfg.epochs_decay < 1:
        raise DataError("--epochs 0 --epochs-decay 0: nothing to train (the paper: 100 + 100)")
    if cfg.data and (cfg.data_a or cfg.data_b):
        raise DataError("--data and --data-a/--data-b are two ways to give the training data: "
                        "give one" + (" (a resumed run brings its own: drop the one typed)"
                                      if cfg.resume else ""))
    if cfg.data_a and cfg.data_b and Path(cfg.data_a).resolve() == Path(cfg.data_b).resolve():
        raise DataError(f"--data-a and --data-b are one folder ({cfg.data_a}): the model would "
                        "learn to copy its input")
    if cfg.lab_colorization and cfg.direction != "AtoB":
        whose = " (the resumed run's)" if cfg.resume else ""
        raise DataError(f"--direction {cfg.direction}{whose} has no meaning with "
                        "--lab-colorization (L -> ab)")
    if cfg.lab_colorization and (cfg.data_a or cfg.data_b):
        raise DataError("--lab-colorization takes one folder of colour images (--data)")
    if cfg.lab_colorization and (cfg.in_channels, cfg.out_channels) != (3, 3):
        raise DataError("--in-channels/--out-channels: a --lab-colorization model takes L, "
                        "gives ab")
    if not (cfg.data or cfg.data_a or cfg.data_b):
        raise DataError("no training data: give --data DIR|NAME or --data-a DIR --data-b DIR")
    env.check_flags(cfg.norm)


def run(cfg: TrainConfig, env: distributed.Job) -> Trainer:
    """Set up and train. Under torchrun every step that may fail is agreed (``env.agree``):
    all ranks raise, rank 0 reports; rank 0 alone downloads and writes the run folder."""
    env.agree(_check_flags, cfg, env)

    def find_data():
        return datasets.resolve(cfg.data) if cfg.data else None

    root = env.main_first(find_data, find_data)  # rank 0 downloads a named set first
    train_ds, sample_ds = env.agree(lambda: data.build_datasets(
        root, Path(cfg.data_a) if cfg.data_a else None, Path(cfg.data_b) if cfg.data_b else None,
        cfg.lab_colorization, cfg.direction, cfg.image_size, cfg.load_size, cfg.flip, cfg.seed,
        check=False, in_channels=cfg.in_channels, out_channels=cfg.out_channels))
    # Every file decoded: its bands checked, its depth seen.
    depths = env.check_images(train_ds, sample_ds)
    out = Path(cfg.output)
    # Held from before the run folder is touched until the run ends; the kernel drops it
    # when the process dies, so a killed run never blocks its --resume.
    lock = env.main_first(lambda: lock_run(out), lambda: None)
    try:
        return _start(cfg, env, root, train_ds, sample_ds, out, depths)
    finally:
        if lock is not None:
            lock.close()


def _start(cfg: TrainConfig, env: distributed.Job, root, train_ds, sample_ds,
           out: Path, depths: dict) -> Trainer:
    device = env.device
    lab = cfg.lab_colorization
    model_cfg = ModelConfig(in_channels=1 if lab else cfg.in_channels,
                            out_channels=2 if lab else cfg.out_channels,
                            image_size=cfg.image_size, ngf=cfg.ngf, ndf=cfg.ndf,
                            norm=distributed.model_norm(cfg.norm))
    # The data's depths go into the checkpoint: p2p-export records them in the model's
    # metadata, and p2p-translate writes outputs at output_depth (runtime.metadata).
    task = {"direction": cfg.direction, "color_space": "lab" if lab else "rgb",
            **recorded_task(root, cfg.data, cfg.data_a, cfg.data_b), **depths}
    latest = out / "checkpoints" / "latest.pt"
    state = env.main_first(lambda: prepare_output(out, cfg.resume, cfg.overwrite),
                           lambda: checkpoint.load_checkpoint(latest) if cfg.resume else None)
    # Seed before building the networks: init weights and dropout masks follow the seed.
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    t = Trainer(cfg, model_cfg, task, device)
    t.train_images = len(train_ds)
    env.seed(cfg.seed)
    before = previous_run(out) if state is not None else {}
    if state is not None:
        env.agree(lambda: t.load_state_dict(env.resume_state(state, latest), latest,
                                            before.get("data_path") or None))
        had = state.get("train_images")  # (checkpoints of earlier versions: fit's check)
        if isinstance(had, int) and had != len(train_ds):
            # Steps and epochs count in the run's own epoch length: with another count the
            # position in the epoch is wrong (with fewer pairs, past its end: no step could
            # ever be taken), and the run would not continue as it would have.
            raise DataError(f"{out}: the run's data now holds {len(train_ds)} training "
                            f"pairs, it had {had}: --resume continues a run on its own data; "
                            "restore it, or start a new run from this one's weights with "
                            f"--init-from {latest}")
        if env.main:
            print(f"resuming {out} at step {t.step} (epoch {t.epoch})")
    elif cfg.init_from:  # every rank loads the same file before DDP wraps the networks
        init = env.agree(init_from, t.G, t.D, model_cfg, cfg.init_from, cfg.init_from_d)
        if env.main:
            print(f"starting from {init['generator']} ({init['format']}, step "
                  f"{init['step']}, sha256 {init['generator_sha256'][:12]}...); fresh "
                  "optimizers and schedule")
    if cfg.init_from:  # where the weights started: kept through resumes (init is not redone)
        task["init"] = init if state is None else state["task"].get("init")
    env.wrap(t)
    run_info = {"train": asdict(cfg), "model": asdict(model_cfg), "task": task,
                "data_path": str(root.resolve() if root else ""), "device": str(device),
                "world_size": env.world,
                "train_images": len(train_ds), "sample_images": len(sample_ds),
                "sample_source": sample_ds.source, "sample_metric": sample_metric(sample_ds)}

    def begin() -> None:  # once there is something to train: a resume that has nothing
        if env.main:  # left to do leaves the run's config as it was
            checkpoint.atomic_write(out / "config.json", lambda tmp: tmp.write_text(
                json.dumps(run_info, indent=2) + "\n"))
            print(f"{len(train_ds)} training pairs from {root or cfg.data_a}; run folder {out}")
            for note in getattr(train_ds, "notes", ()):
                print(note)
            if sample_ds.source == "train":
                print("no val/ folder: samples and their L1 (train_L1 in metrics.jsonl) are "
                      "on training images, not held-out ones")
        env.announce(cfg.batch_size)

    fit(t, train_ds, sample_ds, out, begin)
    return t

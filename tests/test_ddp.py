"""torchrun data-parallel training on the CPU (gloo, 2 processes), tiny models.

Each torchrun start costs several seconds here, so runs are shared between assertions.
Checks: one run folder written by rank 0 only; 2 ranks x batch 1 == 1 process x batch 2
(instance norm); with batch norm (per-process statistics) 2 ranks x batch 1 == one process
averaging the gradients of two batch-1 passes (an oracle written here from the paper's
losses); --resume under DDP reproduces an uninterrupted DDP run; failures end the job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from p2p.cli.train import main as train_cli
from p2p.export.load import load as export_load
from p2p.trainer.data import EpochSampler, PairDataset
from p2p.trainer.distributed import model_norm
from p2p.trainer.models import ModelConfig, PatchDiscriminator, UnetGenerator, init_weights
from test_train import losses, make_pairs

pytestmark = pytest.mark.slow

P2P_TRAIN = Path(sys.executable).with_name("p2p-train")
# 32 px: no dropout block in the U-Net, so weights depend on data and init alone.
TINY = ["--image-size", 32, "--load-size", 36, "--ngf", 8, "--ndf", 8, "--quiet",
        "--threads", 1, "--workers", 0, "--seed", 3]


def torchrun(*args, script: Path = P2P_TRAIN, timeout: float = 240):
    """Two gloo ranks on this machine; returns (CompletedProcess, seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script), *map(str, args)]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return r, time.monotonic() - start


def ok(r):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def cli(*args):
    r = CliRunner().invoke(train_cli, [str(a) for a in args])
    return r


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp") / "d"
    make_pairs(d / "train", 6)
    make_pairs(d / "val", 2, seed=1)
    return d


def weights(run: Path, net: str) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)[net]


def assert_same_weights(a: dict, b: dict, names=None, skip=()):
    """Equal to float tolerance. Adam divides each gradient by its own magnitude, so an
    element whose gradient is ~0 turns rounding differences (a sum of two ranks' gradients
    against a batch of two) into visible steps: allow 0.1% of elements up to lr / 2 apart.
    A real difference (other samples, a sum not a mean) moves most elements by ~lr a step."""
    compared = [k for k in names or a if k not in skip]
    assert compared
    for k in compared:
        x, y = a[k].float(), b[k].float()
        off = ((x - y).abs() > 1e-6 + 1e-4 * y.abs()).float().mean().item()
        assert off <= 1e-3 and (x - y).abs().max() < 1e-4, (k, off, (x - y).abs().max())


def shift_invariant_biases(net: nn.Module) -> set[str]:
    """Biases of convolutions followed by an instance norm: the norm removes any per-channel
    shift, so their gradient is zero but for rounding, which Adam scales up to +-lr steps.
    They carry no information (and export as a no-op), so equality checks leave them out."""
    names = set()
    for prefix, seq in net.named_modules():
        if isinstance(seq, nn.Sequential):
            mods = list(seq.named_children())
            for (name, m), (_, nxt) in zip(mods, mods[1:]):
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None \
                        and isinstance(nxt, nn.InstanceNorm2d):
                    names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


def test_instance_norm_two_ranks_equal_one_process_batch_two(pairs, tmp_path):
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    common = ["--data", pairs, *TINY, "--norm", "instance", "--max-steps", 4, "--log-every", 1,
              "--sample-every", 2, "--save-every", 2, "--snapshot-every", 4]
    r, _ = torchrun(*common, "--batch-size", 1, "-o", ddp)
    ok(r)
    assert r.stdout.count("global batch 2 x 1 = 2") == 1
    res = cli(*common, "--batch-size", 2, "-o", one)
    assert res.exit_code == 0, res.output
    # Only rank 0 wrote: one folder, one set of checkpoints, one line per step.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "one"]
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["latest.pt",
                                                                       "step_000004.pt"]
    assert sorted(p.name for p in (ddp / "samples").iterdir()) == [
        "step_000000.png", "step_000002.png", "step_000004.png"]
    assert [p.name for p in ddp.glob("*.jsonl")] == ["metrics.jsonl"]
    a, b = losses(ddp), losses(one)
    assert [x["step"] for x in a] == [x["step"] for x in b] == [0, 1, 2, 2, 3, 4, 4]
    for x, y in zip(a, b):  # the logged losses are the means over both ranks
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), (x["step"], k)
    state = torch.load(ddp / "checkpoints" / "latest.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
    cfg = ModelConfig(image_size=32, ngf=8, ndf=8, norm="instance")
    skip = {"generator": shift_invariant_biases(UnetGenerator(cfg)),
            "discriminator": shift_invariant_biases(PatchDiscriminator(cfg))}
    assert len(skip["generator"]) == 7 and len(skip["discriminator"]) == 3
    for net in ("generator", "discriminator"):
        assert_same_weights(weights(ddp, net), weights(one, net), skip=skip[net])


def test_each_rank_takes_every_nth_sample_of_the_epoch_order():
    one = EpochSampler(5, seed=2)
    one.epoch = 3
    order = [i for _, i in one]
    shards = [EpochSampler(5, seed=2, rank=r, world=2) for r in range(2)]
    for s in shards:
        s.epoch = 3
    # 5 samples, 2 ranks: padded by wrapping to 6, so both take 3 steps (no rank waits alone).
    assert [[i for _, i in s] for s in shards] == [order[0::2], order[1::2] + order[:1]]
    assert len(shards[0]) == len(shards[1]) == shards[0].shard == 3
    shards[1].start = 2  # resumed after 2 steps of this epoch
    assert [i for _, i in shards[1]] == [order[0]] and len(shards[1]) == 1


def batch1_gradient_mean_oracle(data: Path, steps: int, seed: int = 3) -> dict:
    """What 2 ranks x batch 1 with per-process batch norm compute, in one process: each
    step, rank r's sample is the single-process order's sample 2k + r; D and then G take one
    Adam step on the mean of the two batch-1 gradients (the paper's losses, l1_weight 100)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(image_size=32, ngf=8, ndf=8, norm="batch")
    G, D = init_weights(UnetGenerator(cfg)), init_weights(PatchDiscriminator(cfg))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    ds = PairDataset(sorted((data / "train").iterdir()), "side-by-side", "AtoB", 32, 36, True,
                     seed=seed)
    sampler, bce, l1 = EpochSampler(len(ds), seed), nn.BCEWithLogitsLoss(), nn.L1Loss()
    keys = []
    for epoch in range(2):
        sampler.epoch = epoch
        keys += list(sampler)
    for k in range(steps):
        pairs = [ds[key] for key in keys[2 * k: 2 * k + 2]]
        real = [(a[None], b[None]) for a, b in pairs]
        fake = [G(a) for a, _ in real]  # batch 1: each image its own statistics
        D.requires_grad_(True)
        opt_d.zero_grad()
        for (a, b), f in zip(real, fake):
            pf, pr = D(torch.cat([a, f.detach()], 1)), D(torch.cat([a, b], 1))
            loss = 0.5 * (bce(pf, torch.zeros_like(pf)) + bce(pr, torch.ones_like(pr)))
            (loss / 2).backward()
        opt_d.step()
        D.requires_grad_(False)
        opt_g.zero_grad()
        for (a, b), f in zip(real, fake):
            pf = D(torch.cat([a, f], 1))
            ((bce(pf, torch.ones_like(pf)) + 100 * l1(f, b)) / 2).backward()
        opt_g.step()
    return {"generator": dict(G.named_parameters()), "discriminator": dict(D.named_parameters())}


def test_batch_norm_is_per_process_and_sync_batch_exports_as_batch(pairs, tmp_path):
    ddp = tmp_path / "ddp"
    r, _ = torchrun("--data", pairs, *TINY, "--norm", "batch", "--max-steps", 3,
                    "--sample-every", 0, "-o", ddp)
    ok(r)
    oracle = batch1_gradient_mean_oracle(pairs, 3)
    for net in ("generator", "discriminator"):  # parameters: running stats are rank 0's own
        assert_same_weights(weights(ddp, net), oracle[net], names=oracle[net])
    # sync_batch: refused on the CPU under torchrun (SyncBatchNorm is CUDA-only); in one
    # process it is batch norm, and the checkpoint records batch norm for export.
    r, _ = torchrun("--data", pairs, *TINY, "--norm", "sync_batch", "--max-steps", 1,
                    "-o", tmp_path / "sync")
    assert r.returncode != 0
    assert r.stderr.count("Error: --norm sync_batch: torch's SyncBatchNorm synchronises CUDA") == 1
    assert not (tmp_path / "sync").exists()
    res = cli("--data", pairs, *TINY, "--norm", "sync_batch", "--max-steps", 1,
              "--sample-every", 0, "-o", tmp_path / "one")
    assert res.exit_code == 0, res.output
    loaded = export_load(tmp_path / "one")
    assert loaded.model.norm == "batch" and model_norm("sync_batch") == "batch"
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(UnetGenerator(loaded.model))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())
    UnetGenerator(loaded.model).load_state_dict(sync.state_dict(), strict=True)


def test_resume_under_ddp_matches_an_uninterrupted_run(pairs, tmp_path):
    # 64 px: the U-Net has a dropout block, so each rank's own RNG stream must come back.
    common = ["--data", pairs, *TINY, "--image-size", 64, "--load-size", 72, "--ngf", 4,
              "--ndf", 4, "--log-every", 3, "--sample-every", 3]
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(torchrun(*common, "--max-steps", 8, "-o", straight)[0])
    ok(torchrun(*common, "--max-steps", 4, "-o", split)[0])  # mid-epoch, mid log window
    r, _ = torchrun("--resume", "-o", split, "--max-steps", 8, "--quiet")
    ok(r)
    assert r.stdout.count("resuming") == 1
    # The stop at step 4 was the last step of that run: logged and sampled; its partial
    # window stayed in the checkpoint, so every other line equals the uninterrupted run's.
    a, b = losses(straight), losses(split)
    assert [x["step"] for x in b].count(4) == 2
    b = [x for x in b if x["step"] != 4]
    assert [x["step"] for x in a] == [x["step"] for x in b] == [0, 3, 3, 6, 6, 8, 8]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-7), (x["step"], k)
    assert_same_weights(weights(straight, "generator"), weights(split, "generator"))
    # Another number of processes would change the global batch and the shards: refused.
    res = cli("--resume", "-o", split, "--max-steps", 9)
    assert res.exit_code == 1
    assert "saved by a job of 2 process(es) and this one has 1" in res.output


def test_a_bad_image_on_one_rank_is_reported_once_before_training(pairs, tmp_path):
    data = tmp_path / "d"
    make_pairs(data / "train", 4)
    raw = (data / "train" / "001.png").read_bytes()  # position 1: rank 1's share
    (data / "train" / "001.png").write_bytes(raw[: len(raw) // 2])
    r, took = torchrun("--data", data, *TINY, "--max-steps", 2, "-o", tmp_path / "run")
    assert r.returncode != 0 and took < 60
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    # Rank 1 decoded it; the job's one line is the single-process message, from rank 0.
    assert len(lines) == 1 and lines[0] == (f"Error: {data / 'train' / '001.png'}: unreadable "
                                            "image: cannot decode: image file is truncated")
    assert not (tmp_path / "run").exists()


FAIL_ON_RANK_1 = """
import os
from p2p.runtime.errors import DataError
from p2p.trainer import train

real_step = train.train_step

def train_step(t, a, b):  # what a file gone bad in the middle of training does
    if os.environ["RANK"] == "1" and t.step == 2:
        raise DataError("{path}: unreadable image: injected on rank 1")
    return real_step(t, a, b)

train.train_step = train_step
from p2p.cli.train import main
main()
"""


def test_a_rank_failing_mid_training_ends_the_job_with_its_reason(pairs, tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAIL_ON_RANK_1.format(path=tmp_path / "x.png"))
    r, took = torchrun("--data", pairs, *TINY, "--max-steps", 50, "--sample-every", 0,
                       "-o", tmp_path / "run", script=script, timeout=180)
    assert r.returncode != 0
    assert took < 90, f"the job took {took:.0f} s to end"  # torchrun: SIGTERM, SIGKILL at 30 s
    assert f"Error: rank 1: {tmp_path / 'x.png'}: unreadable image: injected" in r.stderr
    assert "[rank0]: Traceback" not in r.stderr and "[rank1]: Traceback" not in r.stderr
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_saves_once_and_every_rank_exits(pairs, tmp_path, workers):
    # workers 1 (the default): torchrun signals each rank's whole process group (killpg), so
    # the data-loader workers get the SIGTERM too and must leave the stop to their rank.
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(P2P_TRAIN), "--data", str(pairs), *map(str, TINY), "--max-steps", 100000,
           "--log-every", 1, "--sample-every", 0, "-o", str(out), "--workers", workers]
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or "loss_G_L1" not in (
                out / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # what a scheduler does: torchrun passes it on
        start = time.monotonic()
        stdout, stderr = proc.communicate(timeout=90)
        took = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode != 0 and took < 30, (took, stderr[-2000:])
    lines = [ln for ln in stderr.splitlines() if "interrupted at step" in ln]
    assert len(lines) == 1, stderr[-3000:]
    step = int(lines[0].split("interrupted at step ")[1].split(";")[0])
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == step and step >= 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.pt"]

"""``p2p-train``: train pix2pix (the paper's recipe) on paired images; writes a run folder."""

from __future__ import annotations

import click
from click.core import ParameterSource

from p2p.cli.common import CONTEXT, handle_errors, requires
from p2p.runtime.errors import P2PError

with requires("p2p-train"):  # a deployment install has no torch: say which extra brings it
    from p2p.trainer.datasets import NAMES
    from p2p.trainer.distributed import TRAIN_NORMS, JobError
    from p2p.trainer.continuation import recorded_flags
    from p2p.trainer.rundir import default_output, load_run_config
    from p2p.trainer.device import DEVICES
    from p2p.trainer.train import TrainConfig, main as train_main

POS = click.IntRange(min=1)


def _power_of_two(ctx, param, value):
    if value < 32 or value & (value - 1):
        raise click.BadParameter(f"{value} is not a power of two >= 32 (the U-Net halves it "
                                 "log2(size) times)")
    return value


@click.command(context_settings=CONTEXT)
@click.option("--data", help=f"Folder of side-by-side A|B images (train/ and val/ subfolders, "
                             f"or flat), of colour images with --lab-colorization, or a "
                             f"classic dataset name: {'|'.join(NAMES)} (looked up in $P2P_DATA, "
                             f"default ~/.cache/p2p/datasets; downloaded when absent).")
@click.option("--data-a", help="Folder of A images (pairs with --data-b by file name).")
@click.option("--data-b", help="Folder of B images.")
@click.option("--lab-colorization", is_flag=True,
              help="--data is one folder of colour images; learn L -> ab in Lab space.")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), default="AtoB",
              show_default=True, help="Which half is the input (facades labels->photo: BtoA).")
@click.option("--in-channels", type=POS, default=3, show_default=True,
              help="Bands of the input images: 1 greyscale, 3 RGB, N a multi-band TIFF "
                   "(e.g. 4: RGB + near infrared). 8-bit, 16-bit and float (0..1) images.")
@click.option("--out-channels", type=POS, default=3, show_default=True,
              help="Bands of the target images; the exported model writes them at the "
                   "targets' bit depth.")
@click.option("--output", "-o", help="Run folder [default: runs/<data name>].")
@click.option("--image-size", type=int, default=256, show_default=True, callback=_power_of_two,
              help="Training crop, a power of two >= 32; sets the U-Net depth.")
@click.option("--load-size", type=POS, default=286, show_default=True,
              help="Resize to this before the random crop (jitter).")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Random horizontal flip (the same for input and target).")
@click.option("--ngf", type=POS, default=64, show_default=True, help="Generator width.")
@click.option("--ndf", type=POS, default=64, show_default=True, help="Discriminator width.")
@click.option("--norm", type=click.Choice(TRAIN_NORMS), default="batch", show_default=True,
              help="batch: the paper's (under torchrun each process normalises over its own "
                   "batch; at --batch-size 1 that is the paper's batch-1 behaviour); "
                   "sync_batch: batch statistics over all processes (torch's SyncBatchNorm, "
                   "CUDA; saved and exported as batch norm); instance: per image, no "
                   "running statistics.")
@click.option("--l1-weight", type=float, default=100.0, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--beta1", type=float, default=0.5, show_default=True)
@click.option("--batch-size", type=POS, default=1, show_default=True,
              help="Per process: under torchrun the global batch is processes x this.")
@click.option("--epochs", type=click.IntRange(min=0), default=100, show_default=True,
              help="Epochs at the initial learning rate.")
@click.option("--epochs-decay", type=click.IntRange(min=0), default=100, show_default=True,
              help="Then epochs of linear decay to zero.")
@click.option("--max-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop after this many steps in total (0: the whole schedule).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--amp", is_flag=True, help="Mixed precision (CUDA only).")
@click.option("--tf32", is_flag=True,
              help="Let FP32 convolutions and matmuls use TensorFloat-32 on Ampere and newer "
                   "GPUs (faster, 10-bit mantissa). Without it CUDA FP32 is IEEE FP32.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="DataLoader worker processes (0: load in the training process).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="torch CPU threads (0: torch's default).")
@click.option("--log-every", type=POS, default=10, show_default=True,
              help="Write mean losses to metrics.jsonl every N steps.")
@click.option("--sample-every", type=click.IntRange(min=0), default=500, show_default=True,
              help="Write samples/step_N.png every N steps (0: never).")
@click.option("--num-samples", type=POS, default=4, show_default=True,
              help="Fixed val images in each sample grid.")
@click.option("--save-every", type=POS, default=2000, show_default=True,
              help="Update checkpoints/latest.pt every N steps (and at the end / Ctrl-C).")
@click.option("--snapshot-every", type=click.IntRange(min=0), default=20000, show_default=True,
              help="Keep checkpoints/step_N.pt every N steps (0: none).")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False),
              help="Fine-tune: start G (and D) from a p2p checkpoint or a "
                   "pytorch-CycleGAN-and-pix2pix *_net_G.pth; fresh optimizers and schedule.")
@click.option("--init-from-d", type=click.Path(exists=True, dir_okay=False),
              help="With --init-from: the matching *_net_D.pth to start D from.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --output from checkpoints/latest.pt; flags not given "
                   "are taken from its config.json. Larger --epochs/--epochs-decay extend a "
                   "finished run; the LR rule goes on from the current epoch.")
@click.option("--overwrite", is_flag=True, help="Start again in an --output that holds a run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
@handle_errors
def main(ctx, quiet, **opts):
    """Train a pix2pix generator and discriminator; see the run folder for results.

    Data-parallel on several GPUs or machines: torchrun --nproc_per_node N $(which p2p-train)
    ... (DistributedDataParallel, nccl on CUDA, gloo on the CPU; rank 0 writes the run folder).
    """
    if opts["resume"]:
        if not (opts["output"] or opts["data"] or opts["data_a"]):
            raise P2PError("--resume needs --output (or the --data the run used)")
        out = opts["output"] or default_output(opts["data"], opts["data_a"])
        saved = load_run_config(out)
        if (ctx.get_parameter_source("init_from") != ParameterSource.DEFAULT
                and opts["init_from"] != saved.get("init_from")):
            raise P2PError("--init-from starts a new run; --resume continues its own "
                           "checkpoint (drop --init-from, or choose another --output)")
        # Flags the user did not type come from the run being resumed, never from defaults.
        for name in opts:
            if (name not in ("resume", "overwrite", "output") and name in saved
                    and ctx.get_parameter_source(name) == ParameterSource.DEFAULT):
                opts[name] = saved[name]
        opts["output"] = out
    if opts["init_from_d"] and not opts["init_from"]:
        raise P2PError("--init-from-d needs --init-from (the generator to start from)")
    if opts["init_from"] and not opts["resume"]:
        # The architecture the starting weights have, for every flag the user did not type.
        taken = {name: value for name, value in
                 recorded_flags(opts["init_from"], opts["init_from_d"]).items()
                 if ctx.get_parameter_source(name) == ParameterSource.DEFAULT
                 and value != opts[name]}
        opts.update(taken)
        if taken:
            click.echo(f"--init-from {opts['init_from']}: " + ", ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in taken.items()) + " (as it records)")
    opts["output"] = opts["output"] or default_output(opts["data"], opts["data_a"])
    try:
        with requires("p2p-train"):  # tensorboard, onnx...: imported on the way
            train_main(TrainConfig(**opts, progress=not quiet))
    except JobError as e:  # raised alike on every torchrun rank: rank 0 says it once
        if not e.report:
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":  # torchrun -m p2p.cli.train ... (when no p2p-train script is on PATH)
    main()

"""Where a training run executes, and its CUDA numerics (cuDNN autotuning, what "FP32" means).

- ``resolve``: ``--device`` to a ``torch.device``; a request that cannot run here is an
  error, never a quiet CPU run.

- ``torch.backends.cudnn.benchmark``: the training input size never changes (every crop is
  ``--image-size``, every batch ``--batch-size`` but an epoch's last), so cuDNN may time its
  convolution algorithms once per shape and keep the fastest. The choice can differ between
  runs, so on a GPU a resumed run matches an uninterrupted one to float tolerance, not bit
  for bit (atomics in cuDNN's backward already allowed that).
- TensorFloat-32: torch's own default runs cuDNN convolutions in TF32 on Ampere and newer
  GPUs (10-bit mantissa), while its matmuls stay IEEE FP32. p2p states it: without ``--tf32``
  both are IEEE FP32, so an FP32 baseline is FP32; ``--tf32`` turns TF32 on for both. Set
  through the per-operator ``fp32_precision`` API of torch >= 2.9 ("ieee" | "tf32"; see
  https://pytorch.org/docs/stable/notes/cuda.html#tensorfloat-32-tf32-on-ampere-and-later-devices),
  or the older ``allow_tf32`` flags; mixing both APIs in one process makes torch raise.
"""

from __future__ import annotations

import os

import torch

from p2p.runtime.errors import ProviderError, choices

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve(name: str, amp: bool) -> torch.device:
    """Never silently falls back: a CUDA request runs on CUDA or stops with one line."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
        if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 speaks for the job
            print(f"device: {name} (auto)")
    elif name == "cuda" and not torch.cuda.is_available():
        raise ProviderError(f"--device cuda: CUDA is not available (torch {torch.__version__} "
                            "sees no CUDA GPU); use --device cpu or auto")
    elif name == "mps" and not has_mps:
        raise ProviderError("--device mps: Apple MPS is not available here; use --device cpu "
                            "or auto")
    elif name not in DEVICES:
        raise ProviderError(f"--device {name}: unknown; allowed: {choices(DEVICES)}")
    if amp and name != "cuda":
        raise ProviderError(f"--amp: mixed precision needs CUDA, and this run is on {name}; "
                            "drop --amp or use --device cuda")
    return torch.device(name)


def configure(device: torch.device, tf32: bool) -> None:
    """Set cuDNN autotuning and the FP32 precision for a run on ``device``.

    Raises ProviderError for ``tf32`` off CUDA (a request that cannot run is never dropped)."""
    if device.type != "cuda":
        if tf32:
            raise ProviderError(f"--tf32: TensorFloat-32 is an NVIDIA GPU mode, and this run "
                                f"is on {device.type}; drop --tf32 or use --device cuda")
        return
    torch.backends.cudnn.benchmark = True
    mode = "tf32" if tf32 else "ieee"
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

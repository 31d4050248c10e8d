"""Faster CPU training of the U-Net's inner layers: small-spatial convolutions as one matmul.

The U-Net's innermost blocks hold most of its weights (512-1024 channels, 4x4 kernels) but
see tiny feature maps (1x1 to 8x8). oneDNN handles those shapes badly on CPU (it reorders
the large weights on every call), so a conv there costs far more than its arithmetic.
Written as unfold/matmul (conv) or matmul/fold (transposed conv), the same function runs
~2x faster there, and a whole 256x256 training step about 15-20% faster on a 2-core CPU.

Only the computation changes: the modules keep their class hierarchy (subclasses), their
parameters and their state_dict keys, so checkpoints and export are unaffected.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

MAX_SIDE = 8  # measured: at 16x16 and above oneDNN is as fast or faster


def _out(size: int, k: int, s: int, p: int, transposed: bool) -> int:
    return (size - 1) * s - 2 * p + k if transposed else (size + 2 * p - k) // s + 1


class MatmulConv2d(nn.Conv2d):
    def forward(self, x):
        if x.shape[-1] > MAX_SIDE or x.shape[-2] > MAX_SIDE:
            return super().forward(x)
        (k, _), (s, _), (p, _) = self.kernel_size, self.stride, self.padding
        n, _, h, w = x.shape
        cols = F.unfold(x, k, padding=p, stride=s)  # (N, Cin*k*k, L)
        y = self.weight.reshape(self.out_channels, -1) @ cols
        y = y.reshape(n, self.out_channels, _out(h, k, s, p, False), _out(w, k, s, p, False))
        return y if self.bias is None else y + self.bias[:, None, None]


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    def forward(self, x, output_size=None):
        if output_size is not None or x.shape[-1] > MAX_SIDE or x.shape[-2] > MAX_SIDE:
            return super().forward(x, output_size)
        (k, _), (s, _), (p, _) = self.kernel_size, self.stride, self.padding
        n, c, h, w = x.shape
        cols = self.weight.reshape(c, -1).t() @ x.reshape(n, c, h * w)  # (N, Cout*k*k, HW)
        y = F.fold(cols, (_out(h, k, s, p, True), _out(w, k, s, p, True)), k, padding=p,
                   stride=s)
        return y if self.bias is None else y + self.bias[:, None, None]


def use_matmul_convs(net: nn.Module) -> nn.Module:
    """Switch plain square 2D convs (no groups/dilation) in ``net`` to the matmul versions."""
    for m in net.modules():
        plain = (m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros"
                 and len(set(m.kernel_size)) == len(set(m.stride)) == len(set(m.padding)) == 1
                 ) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) else False
        if plain and type(m) is nn.Conv2d:
            m.__class__ = MatmulConv2d
        elif plain and type(m) is nn.ConvTranspose2d and m.output_padding == (0, 0):
            m.__class__ = MatmulConvTranspose2d
    return net

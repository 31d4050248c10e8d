"""pix2pix networks: the U-Net generator and the 70x70 PatchGAN discriminator.

Module structure (``self.model`` Sequentials, their indices) mirrors
junyanz/pytorch-CycleGAN-and-pix2pix on purpose: that project's ``*_net_G.pth`` state_dicts
load into ``UnetGenerator`` with ``strict=True`` and no key renaming.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from p2p.runtime.errors import choices

NORMS = ("batch", "instance")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the networks; saved inside every checkpoint."""

    in_channels: int = 3
    out_channels: int = 3
    image_size: int = 256  # power of two >= 32; sets the U-Net depth
    ngf: int = 64
    ndf: int = 64
    norm: str = "batch"
    d_layers: int = 3  # 3 -> the 70x70 PatchGAN

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "image_size", "ngf", "ndf", "d_layers"):
            v = getattr(self, name)  # (a checkpoint edited by hand: one line, no traceback)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} {v!r} is not a positive integer")
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r} is not one of {choices(NORMS)}")
        if self.image_size < 32 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image size {self.image_size} is not a power of two >= 32")

    @property
    def num_downs(self) -> int:
        # 256 -> 8 downsamplings: the innermost block sees a 1x1 bottleneck.
        return int(math.log2(self.image_size))


def norm_layer(norm: str):
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    # The reference's instance norm has no affine parameters and no running statistics.
    return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)


class UnetSkipConnectionBlock(nn.Module):
    """down -> submodule -> up, with the block's input concatenated to its output."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None,
                 outermost=False, innermost=False, norm="batch", use_dropout=False):
        super().__init__()
        self.outermost = outermost
        make_norm = norm_layer(norm)
        use_bias = norm == "instance"  # batch norm has its own shift, so convs skip bias
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        uprelu = nn.ReLU(True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            # The 1x1 bottleneck has no norm: at batch 1, normalising one pixel zeroes it.
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1,
                                        bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, make_norm(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1,
                                        bias=use_bias)
            layers = [downrelu, downconv, make_norm(inner_nc), submodule, uprelu, upconv,
                      make_norm(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net-256 by default: 8 downsamplings, skips, tanh output in [-1, 1]."""

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        ngf, norm = cfg.ngf, cfg.norm
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        # The ngf*8 blocks just outside the innermost one carry dropout (3 of them at 256),
        # which is pix2pix's only source of noise: the paper keeps it on at test time.
        for _ in range(cfg.num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm,
                                            use_dropout=True)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(cfg.out_channels, ngf, input_nc=cfg.in_channels,
                                             submodule=block, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake logits, each seeing a 70x70 patch (3 layers).

    Conditional: it takes the input and the (real or generated) output concatenated,
    so its first conv has in_channels + out_channels inputs.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        ndf, n_layers = cfg.ndf, cfg.d_layers
        make_norm = norm_layer(cfg.norm)
        use_bias = cfg.norm == "instance"
        layers = [nn.Conv2d(cfg.in_channels + cfg.out_channels, ndf, 4, 2, 1),
                  nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=use_bias),
                       make_norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The paper's init: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())

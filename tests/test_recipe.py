"""The recipe guard: p2p's training step and training tensors against an independent
reference, so a change to the recipe (losses, their weights, the optimizer, the order of
the updates, the jitter) cannot pass unnoticed.

The reference is the test-local copy of junyanz/pytorch-CycleGAN-and-pix2pix's networks
(tests/reference_nets.py) driven by a loop written here from the paper (Isola et al. 2017,
sec. 3.3 and 4) and that project's ``pix2pix_model.py``: its own BCE-with-logits, L1 and
Adam (Kingma & Ba 2015, Algorithm 1), none of p2p's or torch's loss/optimizer classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from p2p.trainer import train as train_mod
from p2p.trainer.cpu_convs import MatmulConv2d, MatmulConvTranspose2d
from p2p.trainer.data import PairDataset, jitter_params
from p2p.trainer.models import ModelConfig
from reference_nets import JunyanzNLayerDiscriminator, JunyanzUnetGenerator, junyanz_norm

SIZE, NGF, NDF, STEPS = 64, 4, 4, 6  # U-Net-64: six downsamplings, one dropout block


def bce_with_logits(x: torch.Tensor, target: float) -> torch.Tensor:
    """mean(-t log s(x) - (1 - t) log(1 - s(x))), written in its stable form."""
    return (x.clamp(min=0) - x * target + torch.log1p(torch.exp(-x.abs()))).mean()


class Adam:
    """Kingma & Ba's Algorithm 1 (bias-corrected moments), eps 1e-8 as torch's default."""

    def __init__(self, params, lr=2e-4, beta1=0.5, beta2=0.999, eps=1e-8):
        self.params = list(params)
        self.lr, self.b1, self.b2, self.eps, self.t = lr, beta1, beta2, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads) -> None:
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            m_hat = m / (1 - self.b1 ** self.t)
            v_hat = v / (1 - self.b2 ** self.t)
            p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


def reference_step(G, D, opt_g: Adam, opt_d: Adam, a, b, l1_weight=100.0) -> list[float]:
    """One pix2pix iteration as the reference orders it: G forward; D update on the real
    and the (detached) generated pair with the loss halved; G update against the updated D
    with GAN + l1_weight * L1. Returns [G_GAN, G_L1, D_real, D_fake]."""
    fake = G(a)
    pred_fake = D(torch.cat([a, fake.detach()], 1))
    pred_real = D(torch.cat([a, b], 1))
    loss_d_fake, loss_d_real = bce_with_logits(pred_fake, 0.0), bce_with_logits(pred_real, 1.0)
    opt_d.step(torch.autograd.grad(0.5 * (loss_d_fake + loss_d_real), opt_d.params))
    pred_fake = D(torch.cat([a, fake], 1))
    loss_g_gan = bce_with_logits(pred_fake, 1.0)
    loss_g_l1 = (fake - b).abs().mean()
    opt_g.step(torch.autograd.grad(loss_g_gan + l1_weight * loss_g_l1, opt_g.params))
    return [float(x.detach()) for x in (loss_g_gan, loss_g_l1, loss_d_real, loss_d_fake)]


def plain_convs(net: nn.Module) -> None:
    """Undo trainer/cpu_convs: back to torch's own convolutions (the other CPU path)."""
    for m in net.modules():
        if type(m) is MatmulConv2d:
            m.__class__ = nn.Conv2d
        elif type(m) is MatmulConvTranspose2d:
            m.__class__ = nn.ConvTranspose2d


@pytest.mark.parametrize("matmul_convs", [True, False])
def test_train_step_matches_an_independent_reference_loop(matmul_convs):
    torch.manual_seed(0)
    cfg = train_mod.TrainConfig(image_size=SIZE, ngf=NGF, ndf=NDF, progress=False)
    t = train_mod.Trainer(cfg, ModelConfig(image_size=SIZE, ngf=NGF, ndf=NDF),
                          {"direction": "AtoB", "color_space": "rgb"}, torch.device("cpu"))
    kinds = {type(m) for m in t.G.modules()}
    assert (MatmulConv2d in kinds) is True  # the CPU default...
    if not matmul_convs:
        plain_convs(t.G)  # ...and the other path
        assert MatmulConv2d not in {type(m) for m in t.G.modules()}
    G = JunyanzUnetGenerator(3, 3, 6, NGF, junyanz_norm("batch"), use_dropout=True)
    D = JunyanzNLayerDiscriminator(6, NDF, 3, junyanz_norm("batch"))
    G.load_state_dict(t.G.state_dict())  # the same initial weights (and key names)
    D.load_state_dict(t.D.state_dict())
    t.G.train(), t.D.train(), G.train(), D.train()
    opt_g, opt_d = Adam(G.parameters()), Adam(D.parameters())
    rng = np.random.default_rng(1)
    for step in range(STEPS):
        a, b = (torch.from_numpy(rng.uniform(-1, 1, (1, 3, SIZE, SIZE)).astype(np.float32))
                for _ in range(2))
        torch.manual_seed(100 + step)  # the same dropout masks on both sides
        ours = train_mod.train_step(t, a, b).tolist()
        torch.manual_seed(100 + step)
        ref = reference_step(G, D, opt_g, opt_d, a, b)
        assert ours == pytest.approx(ref, abs=1e-4), (step, ours, ref)
    assert min(ref) > 0  # real losses were compared, not zeros
    # The losses move little in six steps at lr 2e-4 (an L1 weight of 90 instead of 100
    # shifts them by only 5e-5), so the weights and BatchNorm statistics are compared too:
    # measured here, 1e-6 apart for the same recipe, 1.1e-3 apart with an L1 weight of 90.
    for ours_net, ref_net in ((t.G, G), (t.D, D)):
        for (name, p), q in zip(ours_net.state_dict().items(), ref_net.state_dict().values()):
            if p.dtype.is_floating_point:
                assert (p - q).abs().max() <= 1e-5, name


def reference_chain(ab: Image.Image, x: int, y: int, flip: bool, load: int, crop: int):
    """junyanz's aligned dataset + get_transform, written with PIL as torchvision's ops are
    (torchvision is not installed here, and PyPI's build does not load with this torch):
    split A|B -> Resize((load, load), BICUBIC) [torchvision: PIL's resize for PIL images]
    -> crop at (x, y) [F.crop: img.crop((left, top, left + w, top + h))] -> flip
    [F.hflip: FLIP_LEFT_RIGHT] -> ToTensor (/255, HWC -> CHW) -> Normalize(0.5, 0.5)."""
    w, h = ab.size
    out = []
    for half in (ab.crop((0, 0, w // 2, h)), ab.crop((w // 2, 0, w, h))):
        im = half.resize((load, load), Image.BICUBIC).crop((x, y, x + crop, y + crop))
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)
        out.append((t - 0.5) / 0.5)
    return out


def test_training_tensors_equal_the_reference_transform_chain(tmp_path):
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:256, 0:512]
    base = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 11.0),
                     (xx + yy) % 256], -1)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "0.png")
    ds = PairDataset([tmp_path / "0.png"], "side-by-side", "AtoB", 256, 286, True, seed=3)
    flips = set()
    for epoch in range(8):
        x, y, flip = jitter_params(3, epoch, 0, 286, 256, True)
        flips.add(flip)
        a, b = ds[(epoch, 0)]
        ref_a, ref_b = reference_chain(Image.open(tmp_path / "0.png").convert("RGB"), x, y,
                                       flip, 286, 256)
        assert a.shape == ref_a.shape == (3, 256, 256)
        torch.testing.assert_close(a, ref_a, atol=1e-6, rtol=0)
        torch.testing.assert_close(b, ref_b, atol=1e-6, rtol=0)
    assert flips == {True, False}  # both branches were compared

"""The networks match the paper and the reference implementation, number for number."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p.trainer.cpu_convs import MatmulConv2d, MatmulConvTranspose2d, use_matmul_convs
from p2p.trainer.models import (ModelConfig, PatchDiscriminator, UnetGenerator,
                                UnetSkipConnectionBlock, count_parameters, init_weights)


def _blocks(G):
    """U-Net blocks from the outermost to the innermost."""
    block, out = G.model, []
    while block is not None:
        out.append(block)
        block = next((m for m in block.model if isinstance(m, UnetSkipConnectionBlock)), None)
    return out


def test_default_parameter_counts_match_reference():
    cfg = ModelConfig()
    assert count_parameters(UnetGenerator(cfg)) == 54_413_955
    assert count_parameters(PatchDiscriminator(cfg)) == 2_768_705


@pytest.mark.parametrize("size,downs", [(32, 5), (64, 6), (128, 7), (256, 8)])
def test_depth_follows_image_size_down_to_a_1x1_bottleneck(size, downs):
    G = UnetGenerator(ModelConfig(image_size=size, ngf=4))
    assert len(_blocks(G)) == downs
    seen = []
    inner = _blocks(G)[-1].model
    inner.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        y = G.eval()(torch.randn(1, 3, size, size))
    assert y.shape == (1, 3, size, size)
    assert seen[0][-2:] == (2, 2)  # the innermost block's input; its downconv makes 1x1


def test_no_norm_on_the_bottleneck_and_norm_elsewhere():
    for norm, kind in (("batch", nn.BatchNorm2d), ("instance", nn.InstanceNorm2d)):
        blocks = _blocks(UnetGenerator(ModelConfig(ngf=4, norm=norm)))
        innermost = list(blocks[-1].model)
        # down path of the innermost block: LeakyReLU, Conv (1x1 out), then straight to ReLU
        assert [type(m) for m in innermost[:3]] == [nn.LeakyReLU, nn.Conv2d, nn.ReLU]
        for b in blocks[1:-1]:
            layers = list(b.model)
            assert isinstance(layers[2], kind)  # norm right after the down conv


@pytest.mark.parametrize("size,n_dropout", [(256, 3), (128, 2), (64, 1)])
def test_dropout_sits_in_the_innermost_ngf8_decoder_blocks(size, n_dropout):
    blocks = _blocks(UnetGenerator(ModelConfig(image_size=size, ngf=4)))
    with_dropout = [i for i, b in enumerate(blocks)
                    if any(isinstance(m, nn.Dropout) for m in b.model.children())]
    # the blocks just outside the innermost one, never the innermost or the outer four
    assert with_dropout == list(range(len(blocks) - 1 - n_dropout, len(blocks) - 1))
    for i in with_dropout:
        d = [m for m in blocks[i].model.children() if isinstance(m, nn.Dropout)][0]
        assert d.p == 0.5


def test_patchgan_has_70px_receptive_field_and_30x30_output():
    D = PatchDiscriminator(ModelConfig(ndf=4))
    assert D(torch.randn(1, 6, 256, 256)).shape == (1, 1, 30, 30)
    # Receptive field: a one-pixel change at the centre moves at most a 70-wide window of
    # logits' inputs, so logits far from it (more than 70 px away) must not change.
    x = torch.randn(1, 6, 256, 256)
    x2 = x.clone()
    x2[..., 128, 128] += 10.0
    with torch.no_grad():
        diff = (D.eval()(x) - D(x2)).abs()[0, 0] > 0
    rows = diff.any(1).nonzero().flatten()
    assert 0 < rows.numel() and (rows.max() - rows.min() + 1) * 8 <= 70 + 8


def test_init_is_normal_0_002_and_output_is_tanh_bounded():
    torch.manual_seed(0)
    G = init_weights(UnetGenerator(ModelConfig(image_size=64, ngf=8)))
    w = torch.cat([m.weight.flatten() for m in G.modules()
                   if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = torch.cat([m.weight for m in G.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1.0) < 0.01
    y = G(torch.randn(2, 3, 64, 64) * 10)
    assert y.abs().max() <= 1.0 and y.abs().max() > 0.0


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_matmul_convs_compute_the_same_function_and_keep_the_state_dict(norm):
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=64, ngf=4, norm=norm)
    G = init_weights(UnetGenerator(cfg))
    fast = UnetGenerator(cfg)
    fast.load_state_dict(G.state_dict())
    use_matmul_convs(fast)
    kinds = {type(m) for m in fast.modules()}
    assert {MatmulConv2d, MatmulConvTranspose2d} <= kinds and nn.Conv2d not in kinds
    assert list(fast.state_dict()) == list(G.state_dict())
    x = torch.randn(1, 3, 64, 64)
    G.eval(), fast.eval()
    y, y_fast = G(x), fast(x)
    assert torch.allclose(y, y_fast, atol=1e-5)
    y.square().sum().backward()
    y_fast.square().sum().backward()
    # float32 sums in another order: equal up to ~1e-5 of the gradients' scale (biases
    # before an instance norm have a true gradient of 0, so no per-tensor relative check)
    scale = max(p.grad.abs().max() for p in G.parameters())
    for (name, p), q in zip(G.named_parameters(), fast.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5 * scale, name

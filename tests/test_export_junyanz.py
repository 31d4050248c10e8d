"""p2p-export of junyanz/pytorch-CycleGAN-and-pix2pix generators (``*_net_G.pth``): the same
outputs as that project's own network (tests/reference_nets.py) in both norm modes, old
instance-norm files, and the hint that says which flags fit."""

from __future__ import annotations

import copy
import stat

import numpy as np
import pytest
import torch
from torch import nn

from p2p.export.load import Overrides, load
from p2p.runtime.engine import Engine
from p2p.runtime.host import file_sha256
from reference_nets import JunyanzUnetGenerator, junyanz_norm
from test_export import NGF, SIZE, images, liven, private_cache, run_cli  # noqa: F401


# --- a junyanz/pytorch-CycleGAN-and-pix2pix generator (tests/reference_nets.py) -----------

@pytest.fixture(scope="module")
def junyanz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("junyanz") / "latest_net_G.pth"
    net = liven(JunyanzUnetGenerator(3, 3, 6, NGF, junyanz_norm("batch"), use_dropout=True), 5)
    torch.save(net.state_dict(), path)  # what their save_networks writes
    assert "model.model.0.weight" in net.state_dict()
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
    return path, net


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["per-image", "running"])
def test_junyanz_state_dict_matches_reference_network(junyanz_file, tmp_path, mode):
    path, net = junyanz_file
    net = copy.deepcopy(net)  # train-mode forward updates running stats: keep the original
    out = tmp_path / "g.onnx"
    result = run_cli([path, "-o", out, "--ngf", NGF, "--image-size", SIZE, "--norm-mode", mode])
    assert result.exit_code == 0, result.output
    x = images(4, seed=11)
    with torch.no_grad():
        if mode == "per-image":  # their test.py: train-mode BN at batch 1; dropout disabled
            net.train()
            for m in net.modules():
                if isinstance(m, nn.Dropout):
                    m.eval()
            ref = torch.cat([net(torch.from_numpy(x[k:k + 1])) for k in range(4)]).numpy()
        else:  # their --eval
            ref = net.eval()(torch.from_numpy(x)).numpy()
    assert ref.std() > 0.1
    engine = Engine(out, provider="cpu", batch_size=4)
    assert np.abs(engine.run(x) - ref).max() <= 1e-4
    meta = engine.metadata
    assert (meta.source, meta.direction, meta.training_step, meta.norm_mode) == \
        ("junyanz", "AtoB", 0, mode)
    assert meta.checkpoint_sha256 == file_sha256(path)


def test_junyanz_old_instance_norm_file(tmp_path):
    net = liven(JunyanzUnetGenerator(3, 3, 5, NGF, junyanz_norm("instance")), 2)
    state = net.state_dict()
    # pre-0.4 PyTorch saved running stats for InstanceNorm layers (patch_instance_norm_...)
    for name, m in net.named_modules():
        if isinstance(m, nn.InstanceNorm2d):
            state[name + ".running_mean"] = torch.zeros(m.num_features)
            state[name + ".running_var"] = torch.ones(m.num_features)
    path = tmp_path / "old_net_G.pth"
    torch.save(state, path)
    loaded = load(path, Overrides(ngf=NGF, image_size=32, norm="instance"))
    x = images(3, 32, 32)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x)).numpy()
        assert np.abs(loaded.generator.eval()(torch.from_numpy(x)).numpy() - ref).max() < 1e-6
    # instance norm has no running statistics: asking for them is an error, not a fallback
    result = run_cli([path, "-o", tmp_path / "x.onnx", "--ngf", NGF, "--image-size", 32,
                      "--norm", "instance", "--norm-mode", "running"])
    assert result.exit_code == 1 and "instance norm" in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_junyanz_wrong_flags_say_what_fits(junyanz_file, tmp_path):
    path, _ = junyanz_file
    result = run_cli([path, "-o", tmp_path / "g.onnx"])  # defaults: ngf 64, size 256
    assert result.exit_code == 1
    assert f"--ngf {NGF} --in-channels 3 --out-channels 3 --image-size {SIZE}" in result.output
    assert not (tmp_path / "g.onnx").exists()


def test_junyanz_batchnorm_file_exported_as_instance_gets_the_batch_hint(junyanz_file, tmp_path):
    """Issue 14 fault 5: the hint is read before instance-norm statistics are dropped, the
    line ends with our own summary (no cut torch message), and following the hint exports."""
    path, _ = junyanz_file
    result = run_cli([path, "-o", tmp_path / "g.onnx", "--ngf", NGF, "--image-size", SIZE,
                      "--norm", "instance"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and line.startswith(f"Error: {path}: weights do not fit")
    hint = f"--ngf {NGF} --in-channels 3 --out-channels 3 --image-size {SIZE} --norm batch"
    assert line.endswith(f"; the file looks like {hint}")
    assert "unexpected, e.g. model.model.1.model.2.weight" in line  # the BatchNorm's gamma
    result = run_cli([path, "-o", tmp_path / "g.onnx", *hint.split()])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.onnx").is_file()
    # Issue 14 fault 6: an exported model has the umask's mode, as open() would give it,
    # not mkstemp's 0600 (which breaks serving it as another user or from a container).
    from p2p.runtime import files
    mode = stat.S_IMODE((tmp_path / "g.onnx").stat().st_mode)
    assert mode == files.file_mode() == 0o666 & ~files._UMASK and mode & 0o044

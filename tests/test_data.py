"""Pair datasets: layouts, the paper's jitter (same crop and flip for A and B), resumable
order, Lab colorization, and one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from p2p.runtime import color
from p2p.runtime.errors import DataError
from p2p.trainer.data import EpochSampler, PairDataset, build_datasets, jitter_params


def gradient(size=32, seed=0):
    """An image with no symmetry, so any crop offset or flip is visible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    im = np.stack([x * 255 // size, y * 255 // size, rng.integers(0, 255, (size, size))], -1)
    return Image.fromarray(im.astype(np.uint8))


def side_by_side(folder: Path, n=3, size=32, same=False):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a, b = gradient(size, i), gradient(size, 100 + i)
        im = Image.new("RGB", (2 * size, size))
        im.paste(a, (0, 0))
        im.paste(a if same else b, (size, 0))
        im.save(folder / f"{i}.png")
    return folder


def test_layouts_train_val_and_flat(tmp_path):
    side_by_side(tmp_path / "d" / "train", 3)
    side_by_side(tmp_path / "d" / "val", 2)
    train, val = build_datasets(tmp_path / "d", None, None, False, "AtoB", 32, 36, True, 0)
    assert (len(train), len(val)) == (3, 2)
    flat = side_by_side(tmp_path / "flat", 4)
    train, val = build_datasets(flat, None, None, False, "AtoB", 32, 36, True, 0)
    assert len(train) == len(val) == 4  # no val/: samples come from the training images


def test_direction_picks_the_half(tmp_path):
    d = side_by_side(tmp_path / "d", 1)
    ab = PairDataset([d / "0.png"], "side-by-side", "AtoB", 32, 32, False)
    ba = PairDataset([d / "0.png"], "side-by-side", "BtoA", 32, 32, False)
    a, b = ab[0]
    assert torch.equal(ba[0][0], b) and torch.equal(ba[0][1], a)
    expected_a = np.asarray(gradient(32, 0), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(a, torch.from_numpy(expected_a.transpose(2, 0, 1)))
    assert a.dtype == torch.float32 and a.min() >= -1 and a.max() <= 1


def test_jitter_crops_and_flips_a_and_b_identically(tmp_path):
    d = side_by_side(tmp_path / "d", 1, size=32, same=True)  # A == B, so any mismatch shows
    ds = PairDataset([d / "0.png"], "side-by-side", "AtoB", 32, 48, True, seed=3)
    flips, crops = set(), set()
    for epoch in range(12):
        inp, tgt = ds[(epoch, 0)]
        assert inp.shape == (3, 32, 32) and torch.equal(inp, tgt)
        x, y, flip = jitter_params(3, epoch, 0, 48, 32, True)
        flips.add(flip)
        crops.add((x, y))
        big = np.asarray(gradient(32, 0).resize((48, 48), Image.BICUBIC), dtype=np.float32)
        want = big[y:y + 32, x:x + 32][:, ::-1] if flip else big[y:y + 32, x:x + 32]
        assert np.allclose(inp.numpy().transpose(1, 2, 0), want / 127.5 - 1)
    assert flips == {True, False} and len(crops) > 6


def test_no_flip_and_plain_samples(tmp_path):
    d = side_by_side(tmp_path / "d", 1)
    ds = PairDataset([d / "0.png"], "side-by-side", "AtoB", 32, 32, flip=False)
    assert all(torch.equal(ds[(e, 0)][0], ds[0][0]) for e in range(8))  # no crop room, no flip


def test_jitter_and_order_are_pure_functions_of_seed_epoch_index(tmp_path):
    d = side_by_side(tmp_path / "d", 3)
    ds = PairDataset(sorted(d.iterdir()), "side-by-side", "AtoB", 32, 40, True, seed=7)
    assert torch.equal(ds[(2, 1)][0], ds[(2, 1)][0])
    distinct = {ds[(e, 1)][0].numpy().tobytes() for e in range(6)}
    assert len(distinct) > 2  # the jitter changes with the epoch
    s = EpochSampler(10, seed=7)
    s.epoch = 5
    full = list(s)
    assert sorted(i for _, i in full) == list(range(10)) and {e for e, _ in full} == {5}
    s.start = 4
    assert list(s) == full[4:] and len(s) == 6
    s.epoch, s.start = 6, 0
    assert list(s) != [(6, i) for _, i in full]


def test_two_folders_pair_by_name(tmp_path):
    for side in "ab":
        (tmp_path / side).mkdir()
        for n in ("x.png", "y.png"):
            gradient(32, ord(side)).save(tmp_path / side / n)
    train, _ = build_datasets(None, tmp_path / "a", tmp_path / "b", False, "AtoB", 32, 32,
                              False, 0)
    assert [p[0].name for p in train.items] == ["x.png", "y.png"]
    a, b = train[0]
    assert not torch.equal(a, b)
    gradient(32).save(tmp_path / "b" / "z.png")
    with pytest.raises(DataError, match=r"1 of 3 B images in .*/b have no A image in .*/a: z\.png"):
        build_datasets(None, tmp_path / "a", tmp_path / "b", False, "AtoB", 32, 32, False, 0)


def test_lab_colorization_is_L_to_ab(tmp_path):
    (tmp_path / "c").mkdir()
    gradient(32, 1).save(tmp_path / "c" / "1.png")
    train, _ = build_datasets(tmp_path / "c", None, None, True, "AtoB", 32, 32, False, 0)
    L, ab = train[0]
    assert L.shape == (1, 32, 32) and ab.shape == (2, 32, 32)
    assert L.min() >= -1 and L.max() <= 1 and ab.abs().max() <= 1
    lab = color.model_to_lab(L.numpy().transpose(1, 2, 0), ab.numpy().transpose(1, 2, 0))
    skcolor = pytest.importorskip("skimage.color")  # independent of p2p.runtime.color
    rgb = skcolor.lab2rgb(lab) * 255
    assert np.abs(rgb - np.asarray(gradient(32, 1), dtype=np.float64)).max() < 1.0


@pytest.mark.parametrize("case", ["missing", "empty", "odd", "garbage", "truncated"])
def test_bad_data_is_one_line_naming_the_file(tmp_path, case):
    d = tmp_path / "d"
    if case != "missing":
        d.mkdir()
    if case == "odd":
        Image.new("RGB", (33, 16)).save(d / "odd.png")
    elif case == "garbage":
        (d / "bad.jpg").write_bytes(b"not an image at all")
    elif case == "truncated":
        side_by_side(d, 1)
        raw = (d / "0.png").read_bytes()
        (d / "0.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        train, _ = build_datasets(d, None, None, False, "AtoB", 32, 32, False, 0)
        train[(0, 0)]  # a truncated file passes the header check and fails on decode
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg
    assert {"missing": "no such data folder", "empty": "no images", "odd": "width 33 is odd",
            "garbage": "bad.jpg: unreadable", "truncated": "0.png: unreadable"}[case] in msg

"""Issue 22, finding 2: ``p2p-export`` finds the run's own data for every kind of run.

Runs trained on a folder with only train/, on --data-a/--data-b, on Lab colour photos and on
train/ + val/, each trained with a relative --data and exported from another working folder
that holds a decoy ./data: INT8 calibrates on the run's training inputs and the FP32 check
runs on the run's val (else training) images, never quietly on generated ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2p.export.onnx import ExportConfig, main as export
from p2p.runtime.errors import DataError, ExportError
from p2p.runtime.modelfile import read_metadata
from p2p.trainer.rundata import RunData, find

from test_train import TINY, make_pairs, run


def photos(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"{i}.png")
    return folder


KINDS = {  # data as typed (relative to the training folder), and what find() must give
    "train-only": (["--data", "data"], lambda w: RunData(w / "data" / "train", None, "left", "data")),
    "train-val": (["--data", "data", "--direction", "BtoA"],
                  lambda w: RunData(w / "data" / "train", w / "data" / "val", "right", "data")),
    "two-folders": (["--data-a", "a", "--data-b", "b", "--direction", "BtoA"],
                    lambda w: RunData(w / "b", None, "none", "a|b")),
    "lab": (["--data", "colour", "--lab-colorization"],
            lambda w: RunData(w / "colour", None, "none", "colour")),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("train-here")
    make_pairs(work / "data" / "train", 4)
    make_pairs(work / "data" / "val", 4, seed=1)  # used by train-val only (layout is per run)
    photos(work / "a", 4)
    photos(work / "b", 4, seed=1)
    photos(work / "colour", 4, seed=2)
    import os
    old = Path.cwd()
    os.chdir(work)
    try:
        for kind, (args, _) in KINDS.items():
            if kind == "train-only":  # its own folder: data/ without val/
                make_pairs(work / "only" / "data" / "train", 4)
                os.chdir(work / "only")
            run(*args, *TINY, "--max-steps", 2, "--workers", 0, "--sample-every", 0,
                "-o", work / "runs" / kind)
            os.chdir(work)
    finally:
        os.chdir(old)
    return work


def _expected(kind, work):
    return KINDS[kind][1](work / "only" if kind == "train-only" else work)


@pytest.mark.parametrize("kind", KINDS)
def test_find_gives_the_folders_the_trainer_read_from_anywhere(runs, kind, tmp_path,
                                                               monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)  # elsewhere, with a decoy ./data
    make_pairs(tmp_path / "data" / "train", 2, seed=9)
    task = torch.load(runs / "runs" / kind / "checkpoints" / "latest.pt",
                      weights_only=True)["task"]
    want = _expected(kind, runs)
    got = find(task)
    assert (got.train, got.val, got.split) == (want.train.resolve(),
                                               want.val.resolve() if want.val else None,
                                               want.split)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_export_int8_calibrates_and_checks_on_the_run_s_data(runs, kind, tmp_path,
                                                            monkeypatch, capsys):
    pytest.importorskip("nncf")
    monkeypatch.chdir(tmp_path)
    make_pairs(tmp_path / "data" / "train", 2, seed=9)  # the decoy ./data of issue 22
    make_pairs(tmp_path / "data" / "val", 2, seed=9)
    want = _expected(kind, runs)
    out = tmp_path / "e" / "g.onnx"
    cfg = ExportConfig(source=runs / "runs" / kind, output=out, int8=True,
                       calibration_images=4, int8_min_psnr=0.0)
    try:
        export(cfg)
    except ExportError as e:  # a tiny 2-step net may miss a tolerance; the data is the point
        assert "g.int8.onnx" in str(e) and "verification failed" in str(e), str(e)
    log = capsys.readouterr().out
    assert f"calibrated on 4 images from {want.train.resolve()} " in log, log
    checked = (f"on 4 val images from {want.val.resolve()}" if want.val else
               f"on 4 training images from {want.train.resolve()} (the run has no val/)")
    assert checked in log, log
    assert "generated" not in log and str(tmp_path / "data") not in log
    assert read_metadata(out).verified


def test_a_run_whose_data_is_gone_says_so_and_keeps_the_fp32_file(tmp_path, monkeypatch,
                                                                  capsys):
    pytest.importorskip("nncf")
    data = make_pairs(tmp_path / "gone" / "train", 4).parent
    run("--data", data, *TINY, "--max-steps", 1, "--workers", 0, "--sample-every", 0,
        "-o", tmp_path / "r")
    for p in sorted(data.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    data.rmdir()
    out = tmp_path / "e" / "g.onnx"
    with pytest.raises(ExportError) as e:
        export(ExportConfig(source=tmp_path / "r", output=out, int8=True))
    where = str(data.resolve())
    assert str(e.value) == (f"not written: g.int8.onnx: --int8: cannot calibrate on the run's "
                            f"training images: the run's data {where} is not here; set "
                            "P2P_DATA or pass --calibration DIR (wrote g.onnx)")
    log = capsys.readouterr().out
    assert (f"note: the checks run on generated smooth images, not on the run's data: the "
            f"run's data {where} is not here") in log
    assert read_metadata(out).verified


def test_earlier_checkpoints_record_data_as_typed(tmp_path, monkeypatch):
    """Before issue 22 the task held only 'data' as typed: looked up the trainer's way."""
    make_pairs(tmp_path / "d" / "train", 1)
    photos(tmp_path / "a", 1)
    photos(tmp_path / "b", 1)
    monkeypatch.chdir(tmp_path)
    assert find({"data": "d", "direction": "AtoB"}) == RunData(Path("d/train"), None, "left", "d")
    assert find({"data": "a|b", "direction": "BtoA"}).train == Path("b")
    monkeypatch.setenv("P2P_DATA", str(tmp_path / "cache"))
    make_pairs(tmp_path / "cache" / "facades" / "train", 1)
    make_pairs(tmp_path / "cache" / "facades" / "val", 1)
    got = find({"data": "facades", "direction": "BtoA"})
    assert (got.train, got.val, got.split) == (tmp_path / "cache" / "facades" / "train",
                                               tmp_path / "cache" / "facades" / "val", "right")
    with pytest.raises(DataError, match=re.escape("the run's data 'maps' (a folder here, or a "
                                                  "dataset in $P2P_DATA) is not here")):
        find({"data": "maps"})
    with pytest.raises(DataError, match="records no training data"):
        find({"data": None})

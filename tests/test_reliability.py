"""The bad-input corpus (tests/badfiles.py) through the real console scripts.

For p2p-translate, p2p-process and p2p-train: every decodable file is processed, every other
one is named with its reason, nothing crashes (no traceback), no temp or partial file is left,
and the exit status says what happened. An output folder that cannot take files stops the
command at once with one line, before any work. Subprocesses, with a timeout: a FIFO that
blocks a reader must fail the test, not hang the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from badfiles import UNLISTABLE, Case, make_corpus, noise, readonly_folder
from onnx_models import identity_model

BIN = Path(sys.executable).parent


def cli(name: str, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def assert_clean(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


def leftovers(root: Path) -> list[Path]:
    """Hidden temp files a command may have left behind (the --html gallery's thumbnail
    folder, .gallery, is hidden by design; temp files inside it are still found)."""
    return [p for p in root.rglob(".*") if p.name != ".gallery"] if root.exists() else []


def shown_as(name: str, reason: str) -> str:
    """What a failure line names: the file, or for an unlistable folder the folder."""
    return name.split("/")[0] if reason == UNLISTABLE else name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "in"
    return folder, make_corpus(folder)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return identity_model(tmp_path_factory.mktemp("model") / "identity.onnx",
                          dynamic_size=True, size_multiple=8)


@pytest.fixture
def env(tmp_path):
    return {"P2P_CACHE": str(tmp_path / "cache")}


@pytest.fixture(params=["readonly", "file-in-the-way"])
def unwritable(request, tmp_path):
    """An output folder where creating files really fails, also for root (see badfiles)."""
    if request.param == "file-in-the-way":
        (tmp_path / "a-file").write_text("a regular file where a folder is needed")
        yield tmp_path / "a-file" / "out"
        return
    ro = tmp_path / "ro"
    undo = readonly_folder(ro)
    if undo is None:
        pytest.skip("no way to make a folder read-only here (root on a file system "
                    "without chattr +i); the file-in-the-way case still runs")
    try:
        yield ro / "out"
    finally:
        undo()


# --- p2p-translate --------------------------------------------------------------------------

def test_translate_handles_every_file_of_the_corpus(corpus, model, env, tmp_path):
    src, cases = corpus
    out = tmp_path / "out"
    r = cli("p2p-translate", src, "--model", model, "-o", out, "--split", "none", "-q", "--html",
            env=env, timeout=60)
    assert_clean(r)
    bad = {n: c for n, c in cases.items() if not c.ok}
    good = {n: c for n, c in cases.items() if c.ok}
    assert r.returncode == 1  # some failed
    assert f"translated {len(good)}, skipped 0, failed {len(bad)}" in r.stdout, r.stdout
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith("failed: ")]
    assert len(failed) == len(bad)
    for name, case in bad.items():
        line = [ln for ln in failed if f"{src / shown_as(name, case.reason)}:" in ln]
        assert len(line) == 1 and case.reason in line[0], (name, failed)
        assert not (out / name).with_suffix(".png").exists()
    for name, case in good.items():
        if name == "animated.gif":  # p2p-translate makes an animation a video (issue 20)
            assert (out / "animated.mp4").stat().st_size > 0
            continue
        with Image.open((out / name).with_suffix(".png")) as im:
            im.load()
            assert im.size == case.size, name
    # The identity model shows what decoding did: EXIF rotation applied, 16-bit scaled.
    with Image.open(src / "exif-rotated.jpg") as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.int16)
    assert np.abs(np.asarray(Image.open(out / "exif-rotated.png"), np.int16)
                  - upright).max() <= 1
    grey = np.asarray(Image.open(out / "grey16.png"))[..., 0]
    assert grey.max() == 255 and grey.min() == 0 and len(np.unique(grey)) > 200
    page = (out / "index.html").read_text()  # the gallery lists them all, bad ones too
    assert "ünï cödé 日本 photo.png" in page and "not a regular file (a FIFO)" in page
    assert not leftovers(out)
    assert not (out / "loop").exists()  # the folder cycle was not followed
    # A rerun skips what is there and still names the bad files; exit 1 again.
    again = cli("p2p-translate", src, "--model", model, "-o", out, "--split", "none", "-q",
                env=env)
    assert again.returncode == 1
    assert f"translated 0, skipped {len(good)}, failed {len(bad)}" in again.stdout


def test_translate_all_good_exits_0_and_a_single_bad_file_exits_1(corpus, model, env, tmp_path):
    src, cases = corpus
    r = cli("p2p-translate", src / "cmyk.jpg", src / "ünï cödé 日本 photo.png", "--model", model,
            "-o", tmp_path / "out", "-q", env=env)
    assert r.returncode == 0 and "translated 2, skipped 0, failed 0" in r.stdout
    assert (tmp_path / "out" / "ünï cödé 日本 photo.png").is_file()
    r = cli("p2p-translate", src / "fifo.png", "--model", model, "-o", tmp_path / "o2", "-q",
            env=env, timeout=60)
    assert r.returncode == 1 and "fifo.png: not a regular file (a FIFO)" in r.stdout
    assert_clean(r)


def test_translate_unwritable_output_stops_before_any_work(corpus, model, env, unwritable):
    src, _ = corpus
    r = cli("p2p-translate", src / "plain.png", src / "cmyk.jpg", "--model", model,
            "-o", unwritable, "-q", env=env)
    assert_clean(r)
    assert r.returncode == 1 and r.stdout == ""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
    assert errors == [f"Error: {unwritable}: cannot write into the output folder: "
                      f"{errors[0].rsplit(': ', 1)[-1]}"]
    assert not unwritable.exists()


# --- p2p-process ----------------------------------------------------------------------------

def test_process_handles_every_file_of_the_corpus(corpus, tmp_path):
    src, cases = corpus
    out = tmp_path / "out"
    r = cli("p2p-process", "resize", "--input", src, "--output", out, "--size", "16", "--quiet")
    assert_clean(r)
    # One extension rule for every command: the animated .gif is an image here (its first
    # frame); p2p-translate alone turns an animation into a video.
    bad = {n: c for n, c in cases.items() if not c.ok}
    good = {n: c for n, c in cases.items() if c.ok}
    assert r.returncode == 1
    assert f"resize: {len(good)} written, 0 skipped, {len(bad)} failed" in r.stdout, r.stdout
    failed = [ln for ln in r.stderr.splitlines() if ln.strip().startswith("failed: ")]
    assert len(failed) == len(bad), r.stderr
    for name, case in bad.items():
        line = [ln for ln in failed if f"failed: {src / shown_as(name, case.reason)}:" in ln]
        assert len(line) == 1 and case.reason in line[0], (name, failed)
    for name in good:
        assert Image.open((out / name).with_suffix(".png")).size == (16, 16), name
    # 16-bit grey is read like p2p-translate does, not clipped to white; and (issue 18) it
    # stays 16-bit.
    from p2p.runtime.images import decode

    grey = decode(out / "grey16.png")
    assert grey.dtype == np.uint16 and grey.shape[2] == 1
    assert grey.min() < 50 * 257 and grey.max() > 200 * 257
    assert not leftovers(out)


def test_process_unwritable_output_stops_before_any_work(corpus, unwritable):
    src, _ = corpus
    r = cli("p2p-process", "grayscale", "--input", src, "--output", unwritable, "--quiet")
    assert_clean(r)
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: {unwritable}: cannot write into the output folder")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not unwritable.exists()


# --- p2p-train ------------------------------------------------------------------------------

TINY = ["--image-size", "32", "--load-size", "36", "--ngf", "4", "--ndf", "4", "--threads", "1",
        "--workers", "0", "--quiet", "--sample-every", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    """The corpus as a flat training folder, beside a few real A|B pairs."""
    folder = tmp_path_factory.mktemp("train") / "data"
    cases = make_corpus(folder, shape=(64, 32))  # the decodable ones as 2:1 A|B images
    for i in range(3):
        Image.fromarray(noise(64, 32, 20 + i)).save(folder / f"pair{i}.png")
    # p2p-train reads the folder recursively, by the extension rule of every command (.gif
    # included); an image must also be an A|B pair: exactly 2:1.
    for name in ("one-pixel.png", "odd-width pair.png"):
        cases[name] = Case(False, "is odd, so it is not an A|B side-by-side pair")
    cases["exif-rotated.jpg"] = Case(False, "24x40 is not 2:1, so it is not an A|B side-by-side "
                                            "pair")  # upright, it is a portrait
    if "locked-folder/inside.png" in cases and not cases["locked-folder/inside.png"].ok:
        # Not root: p2p-train stops at the folder it cannot list, with one line of its own
        # (tests/test_data_intent.py); this test is about the files' list.
        (folder / "locked-folder").chmod(0o755)
        shutil.rmtree(folder / "locked-folder")
        del cases["locked-folder/inside.png"]
    return folder, cases


@pytest.mark.slow
def test_train_names_every_bad_file_then_trains_on_the_rest(train_folder, tmp_path):
    src, cases = train_folder
    bad = {n: c for n, c in cases.items() if not c.ok}
    run = tmp_path / "run"
    r = cli("p2p-train", "--data", src, *TINY, "--max-steps", "2", "-o", run)
    assert_clean(r)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    n_images = len(cases) + 3
    assert err[0] == (f"Error: {len(bad)} of {n_images} training images are unusable; fix or "
                      "remove them:"), r.stderr
    assert len(err) == 1 + len(bad)
    for name, case in bad.items():
        line = [ln for ln in err[1:] if ln.strip().startswith(f"{src / name}:")]
        assert len(line) == 1 and case.reason in line[0], (name, err)
    assert not run.exists()  # refused before the run folder was made
    # Without the bad files the same folder trains: CMYK, 16-bit, palette+alpha, EXIF,
    # spaces and non-ASCII names included.
    clean = tmp_path / "clean"
    clean.mkdir()
    for name, case in cases.items():
        if case.ok:
            (clean / name).parent.mkdir(exist_ok=True)
            (clean / name).write_bytes((src / name).read_bytes())
    for i in range(3):
        (clean / f"pair{i}.png").write_bytes((src / f"pair{i}.png").read_bytes())
    r = cli("p2p-train", "--data", clean, *TINY, "--max-steps", "2", "-o", run)
    assert_clean(r)
    assert r.returncode == 0, r.stderr
    assert f"{len(cases) - len(bad) + 3} training pairs" in r.stdout
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 2
    assert not leftovers(run / "checkpoints")


def test_train_unwritable_output_is_one_line(tmp_path, unwritable):
    from click.testing import CliRunner

    from p2p.cli.train import main

    clean = tmp_path / "pairs"
    clean.mkdir()
    for i in range(2):
        Image.fromarray(noise(64, 32, i)).save(clean / f"{i}.png")
    threads = torch.get_num_threads()
    try:  # in-process: the console script's interpreter start would cost seconds
        r = CliRunner().invoke(main, [str(a) for a in ["--data", clean, *TINY,
                                                       "--max-steps", "1", "-o", unwritable]])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    # The run folder's lock is its first file (taken before config.json is written).
    assert errors == [f"Error: {unwritable / '.p2p-train.lock'}: cannot write: "
                      + errors[0].rsplit(": ", 1)[-1]]
    assert not unwritable.exists()


def test_train_bad_file_found_up_front_even_if_only_truncated(tmp_path):
    """A truncated file has a valid header: it must still fail before training starts."""
    from p2p.runtime.errors import DataError
    from p2p.trainer.data import build_datasets

    for i in range(2):
        Image.fromarray(noise(64, 32, i)).save(tmp_path / f"{i}.png")
    raw = (tmp_path / "0.png").read_bytes()
    (tmp_path / "0.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"0\.png: unreadable image: cannot decode"):
        build_datasets(tmp_path, None, None, False, "AtoB", 32, 36, False, 0)


def test_export_verification_skips_bad_val_images(tmp_path):
    """p2p-export checks the model on the run's val/ images: a FIFO there must not block it
    and a bomb must not crash it; the good images are still used."""
    import threading
    from types import SimpleNamespace

    from onnx_models import metadata
    from p2p.export.verify import run_images

    cases = make_corpus(tmp_path)
    for i in range(2):
        Image.fromarray(noise(64, 32, i)).save(tmp_path / f"pair{i}.png")
    # A run trained on tmp_path (flat: no train/ or val/), so its checks use these images.
    loaded = SimpleNamespace(task={"data_root": str(tmp_path), "direction": "AtoB",
                                   "color_space": "rgb"})
    got = []
    worker = threading.Thread(target=lambda: got.append(
        run_images(loaded, metadata(image_size=32), 50)[0]), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # release the blocked open() before failing
        os.close(os.open(tmp_path / "fifo.png", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("run_images blocked on a FIFO")
    # .gif too: one rule; nested images too (the trainer lists a flat run folder recursively)
    usable = [n for n, c in cases.items() if c.ok]
    assert len(got[0]) == len(usable) + 2 and all(x.shape == (3, 32, 32) for x in got[0])

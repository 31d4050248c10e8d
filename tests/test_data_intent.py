"""Training data is used as the user meant, or the command says what it does instead (issue 22,
finding 4): no pair split from a non-2:1 image, no nested pair dropped, no sample L1 on
training images called val."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from p2p.cli.process import main as process_cli
from p2p.cli.train import main as train_cli
from test_train import _restore_threads  # noqa: F401  (autouse: torch's thread count back)

TINY = ["--image-size", "32", "--load-size", "32", "--ngf", "4", "--ndf", "4", "--quiet",
        "--threads", "1", "--workers", "0", "--max-steps", "1", "--sample-every", "0"]


def save(path: Path, w: int, h: int, seed: int = 0, grey: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (h, w, 1 if grey else 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.repeat(3, 2) if grey else a).save(path)
    return path


def train(*args):
    return CliRunner().invoke(train_cli, [str(a) for a in (*args, *TINY)])


def test_non_2to1_images_in_an_ab_folder_are_all_named_before_training(tmp_path):
    d = tmp_path / "d"
    save(d / "train" / "ok.png", 64, 32)
    save(d / "train" / "wide.png", 96, 32)  # 3:1: its middle is no pair boundary
    save(d / "train" / "square.png", 32, 32)  # a stray photo
    save(d / "val" / "val_square.png", 40, 40)  # sample images are checked too
    r = train("--data", d, "-o", tmp_path / "run")
    assert r.exit_code == 1, r.output
    assert "3 of 4 training images are unusable" in r.output
    for name, size in (("wide.png", "96x32"), ("square.png", "32x32"),
                       ("val_square.png", "40x40")):
        assert f"{name}: {size} is not 2:1" in r.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_walkthrough_nested_output_trains_on_every_pair(tmp_path):
    # photos/A and photos/B with the same names, some in a subfolder: the walkthrough's
    # resize -> combine -> split mirrors the subfolder into train/ and val/.
    names = ["1.png", "2.png", "sub/3.png", "sub/4.png", "sub/deeper/5.png"]
    for i, n in enumerate(names):
        save(tmp_path / "photos" / "A" / n, 48, 40, i)
        save(tmp_path / "photos" / "B" / n, 48, 40, 100 + i)
    proc = CliRunner()
    for side in "AB":
        r = proc.invoke(process_cli, ["resize", "--input", str(tmp_path / "photos" / side),
                                      "--output", str(tmp_path / "work" / side), "--size", "32",
                                      "--quiet"])
        assert r.exit_code == 0, r.output
    r = proc.invoke(process_cli, ["combine", "--a", str(tmp_path / "work" / "A"), "--b",
                                  str(tmp_path / "work" / "B"), "--output",
                                  str(tmp_path / "work" / "AB"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = proc.invoke(process_cli, ["split", "--input", str(tmp_path / "work" / "AB"),
                                  "--output", str(tmp_path / "mine"), "--ratios", "0.6,0.4",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    r = train("--data", tmp_path / "mine", "-o", tmp_path / "run")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (info["train_images"], info["sample_images"]) == (3, 2)  # 5 of 5 pairs
    assert "3 training pairs" in r.output


def test_without_val_the_sample_l1_is_named_train_l1(tmp_path):
    d = tmp_path / "flat"
    for i in range(2):
        save(d / f"{i}.png", 64, 32, i)
    out = tmp_path / "run"
    r = CliRunner().invoke(train_cli, [str(a) for a in (
        "--data", d, "-o", out, *TINY[:-2], "--sample-every", "1")])
    assert r.exit_code == 0, r.output
    assert "no val/ folder" in r.output and "train_L1" in r.output
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_L1" in r] == [0, 1]
    assert not [r for r in rows if "val_L1" in r]
    info = json.loads((out / "config.json").read_text())
    assert (info["sample_source"], info["sample_metric"]) == ("train", "train_L1")


def test_a_val_folder_without_train_is_refused(tmp_path):
    d = tmp_path / "d"
    save(d / "a.png", 64, 32)
    save(d / "val" / "b.png", 64, 32)
    r = train("--data", d, "-o", tmp_path / "run")
    assert r.exit_code == 1 and "has val/ but no train/ folder" in r.output, r.output


def test_two_folders_of_different_shapes_do_not_pair(tmp_path):
    save(tmp_path / "a" / "1.png", 32, 32)
    save(tmp_path / "b" / "1.png", 64, 64, 1)  # same shape, other size: scales, lines up
    save(tmp_path / "a" / "2.png", 32, 32, 2)
    save(tmp_path / "b" / "2.png", 32, 48, 3)  # another shape: would not line up
    r = train("--data-a", tmp_path / "a", "--data-b", tmp_path / "b", "-o", tmp_path / "run")
    assert r.exit_code == 1, r.output
    assert "2.png: 32x32 and its B image" in r.output and "32x48 differ in shape" in r.output
    assert "1.png" not in r.output.replace(str(tmp_path / "a" / "2.png"), "")


def test_greyscale_photos_are_no_colorization_data(tmp_path):
    save(tmp_path / "c" / "colour.png", 32, 32)
    save(tmp_path / "c" / "grey.png", 32, 32, grey=True)
    r = train("--data", tmp_path / "c", "--lab-colorization", "-o", tmp_path / "run")
    assert r.exit_code == 1 and "grey.png: greyscale" in r.output, r.output
    assert "colour.png" not in r.output


def test_a_folder_that_cannot_be_listed_is_named_not_skipped(tmp_path, monkeypatch):
    import errno
    import os

    from p2p.runtime import listing

    d = tmp_path / "d"
    save(d / "ok.png", 64, 32)
    (d / "locked").mkdir()
    real_walk = os.walk

    def walk(top, onerror=None, **kw):  # what os.walk does with a folder it may not list
        for entry in real_walk(top, onerror=onerror, **kw):
            if Path(entry[0]).name == "locked":
                onerror(PermissionError(errno.EACCES, "Permission denied", entry[0]))
                continue
            yield entry

    monkeypatch.setattr(listing.os, "walk", walk)
    r = train("--data", d, "-o", tmp_path / "run")
    assert r.exit_code == 1
    assert f"Error: {d / 'locked'}: cannot list this folder: Permission denied" in r.output


def test_images_beside_train_are_named_in_one_note_not_dropped_quietly(tmp_path):
    """--data DIR with train/ (and val/) and images loose beside them: the pix2pix layout
    trains on train/ and samples val/; which split a loose image belongs to is not p2p's to
    guess, so they are not used, and one note line says how many, which and why."""
    d = tmp_path / "d"
    save(d / "train" / "0.png", 64, 32, 0)
    save(d / "train" / "1.png", 64, 32, 1)
    save(d / "val" / "v.png", 64, 32, 2)
    save(d / "test" / "t.png", 64, 32, 3)  # a split of its own: not left out
    loose = [save(d / "a.png", 64, 32, 4), save(d / "b.jpg", 64, 32, 5),
             save(d / "extra" / "c.png", 64, 32, 6)]
    (d / ".hidden.png").write_bytes(b"")  # hidden, like everywhere: not an image to count
    r = train("--data", d, "-o", tmp_path / "run")
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.output.splitlines() if ln.startswith("note:")]
    assert notes == [f"note: 3 images in {d} outside train/ and val/ are not used "
                     f"({', '.join(map(str, loose))}): beside a train/ folder p2p-train "
                     "trains on train/ only and samples val/; move them into train/ to "
                     "train on them"], r.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train_images"] == 2
    # A flat folder trains on all of it, and says nothing.
    r = train("--data", d / "train", "-o", tmp_path / "flat")
    assert r.exit_code == 0 and "not used" not in r.output, r.output


def _notes(d: Path) -> list[str]:
    from p2p.trainer.data import build_datasets

    return build_datasets(d, None, None, False, "AtoB", 32, 32, False, 0, check=False)[0].notes


def test_translate_outputs_are_never_training_data_in_any_layout(tmp_path):
    """A flat --data folder (no train/) with p2p-translate's output inside it trains on the
    originals only and says which folders it left out; so do train/ and val/ with an output
    folder inside them (nested at any depth)."""
    from p2p.trainer.data import build_datasets

    d = tmp_path / "flat"
    a = save(d / "0.png", 64, 32, 0)
    b = save(d / "sub" / "1.png", 64, 32, 1)
    save(d / "sub-translated" / "0.png", 32, 32, 2)
    save(d / "sub" / "deep-translated" / "1.png", 32, 32, 3)
    (d / "empty-translated").mkdir()  # holds no images: not worth a note
    save(tmp_path / "elsewhere" / "2.png", 64, 32, 4)
    (d / "link-translated").symlink_to(tmp_path / "elsewhere")  # links are never followed:
    # renaming it would not make it data, so the note does not name it
    train_set, samples = build_datasets(d, None, None, False, "AtoB", 32, 32, False, 0,
                                        check=False)
    assert train_set.items == [a, b] == samples.items
    assert train_set.notes == [
        f"note: 2 p2p-translate output folders (*-translated) in {d} are not used "
        f"({d / 'sub' / 'deep-translated'}, {d / 'sub-translated'}): translated images are "
        "never training data; rename them to train on them"]

    d = tmp_path / "layout"
    t = save(d / "train" / "0.png", 64, 32, 0)
    v = save(d / "val" / "1.png", 64, 32, 1)
    save(d / "val" / "val-translated" / "1.png", 32, 32, 2)
    train_set, samples = build_datasets(d, None, None, False, "AtoB", 32, 32, False, 0,
                                        check=False)
    assert train_set.items == [t] and samples.items == [v]
    assert train_set.notes == [
        f"note: 1 p2p-translate output folder (*-translated) in {d} is not used "
        f"({d / 'val' / 'val-translated'}): translated images are never training data; "
        "rename it to train on it"]


def test_the_left_out_note_skips_translate_outputs_and_fits_the_layout(tmp_path):
    """p2p-translate's *-translated folders are never suggested as training data; without
    val/ the note says samples come from train/ (as the line after it does); an empty
    train/ with images beside it names them in its error."""
    from p2p.runtime.errors import DataError
    from p2p.trainer.data import build_datasets

    d = tmp_path / "dl6"
    save(d / "train" / "0.png", 64, 32, 0)
    save(d / "val" / "1.png", 64, 32, 1)
    save(d / "val-translated" / "1.png", 32, 32, 2)
    save(d / "extra" / "x-translated" / "2.png", 32, 32, 3)
    assert _notes(d) == []
    loose = save(d / "a.png", 64, 32, 4)
    assert _notes(d) == [f"note: 1 image in {d} outside train/ and val/ is not used ({loose}): "
                         "beside a train/ folder p2p-train trains on train/ only and samples "
                         "val/; move it into train/ to train on it"]
    shutil.rmtree(d / "val")
    assert _notes(d) == [f"note: 1 image in {d} outside train/ is not used ({loose}): beside a "
                         "train/ folder p2p-train trains on train/ only and with no val/ folder "
                         "samples train/ too; move it into train/ to train on it, or into "
                         "a val/ folder to sample it"]
    (d / "train" / "0.png").unlink()
    with pytest.raises(DataError) as e:
        build_datasets(d, None, None, False, "AtoB", 32, 32, False, 0, check=False)
    assert str(e.value).startswith(f"{d / 'train'}: no images (") and str(e.value).endswith(
        f"in this folder; 1 image beside it in {d} ({loose}) is not read: move it into "
        f"{d / 'train'} to train on it"), e.value

"""p2p-eval: metric values against known answers, pairing, and its one-line errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from p2p.cli.eval import main
from p2p.runtime.metrics import PSNR_CAP, l1, psnr, ssim


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def textured(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth structure plus noise, so SSIM is neither ~0 nor ~1."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 5.0 + seed)[..., None] * np.cos(y / 7.0)[..., None]
    return np.clip(base + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)


def invoke(*args):
    return CliRunner().invoke(main, [*map(str, args), "--quiet"])


# ---------------------------------------------------------------------------- metrics


def test_identical_images_score_perfectly():
    a = textured(0)
    assert l1(a, a) == 0.0
    assert psnr(a, a) == PSNR_CAP == 100.0
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_known_noise_level_gives_expected_l1_and_psnr():
    target = np.full((32, 32, 3), 128, np.uint8)
    sign = np.where((np.indices((32, 32)).sum(0) % 2) == 0, 1, -1)[..., None]
    pred = (target.astype(int) + 10 * sign).astype(np.uint8)  # |error| = 10 everywhere
    assert l1(pred, target) == pytest.approx(10 / 255)
    assert psnr(pred, target) == pytest.approx(10 * math.log10(255 ** 2 / 100), abs=1e-9)
    assert psnr(pred, target) == pytest.approx(28.1308, abs=1e-4)


def test_ssim_of_flat_images_matches_the_formula():
    # Flat images: no variance, so SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) exactly.
    c1 = (0.01 * 255) ** 2
    a, b = np.full((20, 20), 100, np.uint8), np.full((20, 20), 150, np.uint8)
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100 ** 2 + 150 ** 2 + c1))
    with pytest.raises(ValueError, match="smaller than SSIM.s 11x11 window"):
        ssim(a[:10], b[:10])


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    a, b = textured(1), textured(2)
    ours = ssim(a, b)
    ref = skm.structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
    assert 0.05 < ours < 0.95
    assert ours == pytest.approx(ref, abs=1e-9)
    gray = skm.structural_similarity(a[..., 0], b[..., 0], data_range=255, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False)
    assert ssim(a[..., 0], b[..., 0]) == pytest.approx(gray, abs=1e-9)


# ---------------------------------------------------------------------------- command


@pytest.fixture
def pairs(tmp_path):
    """pred/ and target/ with nested names, one target stored under another extension."""
    preds, targets = tmp_path / "pred", tmp_path / "target"
    for i, rel in enumerate(["a.png", "sub/b.png", "c.png"]):
        t = textured(10 + i)
        save(targets / rel, t)
        save(preds / rel, t if i == 0 else textured(20 + i))
    # c: the target is a lossless .tif, the prediction a .png: matched by stem
    (targets / "c.png").rename(targets / "c.tif")
    return preds, targets


def test_eval_folders_csv_json_and_means(pairs, tmp_path):
    preds, targets = pairs
    listing = sorted(preds.rglob("*"))
    r = invoke(preds, targets)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("3 images  L1 ")
    assert sorted(preds.rglob("*")) == listing  # nothing written unless asked

    out_csv, out_json = tmp_path / "m" / "metrics.csv", tmp_path / "m" / "metrics.json"
    r = invoke(preds, targets, "--csv", out_csv, "--json", out_json)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["pred"] for row in rows] == ["a.png", "c.png", "sub/b.png"]
    assert rows[1]["target"] == "c.tif"
    assert float(rows[0]["l1"]) == 0 and float(rows[0]["psnr"]) == 100
    assert float(rows[0]["ssim"]) == pytest.approx(1.0)
    p = np.asarray(Image.open(preds / "sub" / "b.png"))
    t = np.asarray(Image.open(targets / "sub" / "b.png"))
    assert float(rows[2]["psnr"]) == pytest.approx(psnr(p, t), abs=1e-4)
    assert float(rows[2]["ssim"]) == pytest.approx(ssim(p, t), abs=1e-6)
    summary = json.loads(out_json.read_text())
    assert summary["count"] == 3
    for key in ("l1", "psnr", "ssim"):
        assert summary[key] == pytest.approx(np.mean([float(row[key]) for row in rows]), abs=1e-4)
    assert f"L1 {summary['l1']:.4f}" in r.output and f"SSIM {summary['ssim']:.4f}" in r.output


def test_eval_targets_from_side_by_side_inputs(tmp_path):
    data, preds = tmp_path / "val", tmp_path / "val-translated"
    a, b = textured(1, 32, 32), textured(2, 32, 32)
    save(data / "1.png", np.concatenate([a, b], axis=1))
    save(preds / "1.png", b)  # a perfect AtoB prediction

    r = invoke(preds, "--targets-from", data, "--direction", "AtoB", "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["l1"] == 0 and s["psnr"] == 100 and s["ssim"] == pytest.approx(1.0)
    assert s["target_half"] == "right"
    r = invoke(preds, "--targets-from", data, "--direction", "BtoA", "--json", tmp_path / "s.json")
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["psnr"] == pytest.approx(psnr(b, a)) and s["target_half"] == "left"

    r = invoke(preds, "--targets-from", data)
    assert r.exit_code == 1 and "--direction" in r.output
    r = invoke(preds, data)  # the A|B folder given as plain targets
    assert r.exit_code == 1 and "--targets-from" in r.output and "32x32 vs 64x32" in r.output


def test_eval_name_and_size_mismatches_are_one_line_errors(pairs, tmp_path):
    preds, targets = pairs
    save(preds / "extra.png", textured(5))
    r = invoke(preds, targets)
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "1 of 4 predictions" in r.output and "extra.png" in r.output
    (preds / "extra.png").unlink()

    (preds / "sub" / "b.png").unlink()
    r = invoke(preds, targets)
    assert r.exit_code == 1 and "no prediction" in r.output and "sub/b.png" in r.output
    save(preds / "sub" / "b.png", textured(3, 24, 32))  # half size

    r = invoke(preds, targets)
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "32x24 vs 64x48" in r.output and "--resize-pred" in r.output
    r = invoke(preds, targets, "--resize-pred")
    assert r.exit_code == 0, r.output

    r = invoke(tmp_path / "nope", targets)
    assert r.exit_code == 1 and "no such predictions folder" in r.output
    (preds / "c.png").write_bytes(b"broken")
    r = invoke(preds, targets)
    assert r.exit_code == 1 and "c.png: not an image Pillow can read" in r.output


def test_16_bit_targets_are_scored_at_16_bits(tmp_path):
    """Issue 14 fault 1 kept (every tool decodes every mode the same way) and issue 18 item 3:
    p2p-eval reads 16-bit images at 16 bits. A 16-bit copy of each target scores exactly
    (L1 0, PSNR at the cap); p2p's own 8-bit rendering of them scores the 8-bit rounding
    error, PSNR = 10 log10(1 / mean((a/65535 - rint(a/257)/255)^2)) ~ 59 dB, not 'identical'."""
    from p2p.runtime.images import open_rgb

    rng = np.random.default_rng(0)
    (tmp_path / "t").mkdir()
    (tmp_path / "same").mkdir()
    err = []
    for i in range(3):
        a = rng.integers(0, 65536, (32, 40), dtype=np.uint16)
        Image.fromarray(a).save(tmp_path / "t" / f"{i}.png")
        Image.fromarray(a).save(tmp_path / "same" / f"{i}.png")
        with Image.open(tmp_path / "t" / f"{i}.png") as im:
            assert im.mode == "I;16"
        eight = np.asarray(open_rgb(tmp_path / "t" / f"{i}.png"))
        save(tmp_path / "p" / f"{i}.png", eight)
        err.append(10 * np.log10(1 / np.mean((a / 65535 - eight[..., 0] / 255) ** 2)))
    r = invoke(tmp_path / "same", tmp_path / "t", "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["count"], s["l1"], s["psnr"]) == (3, 0.0, PSNR_CAP)
    r = invoke(tmp_path / "p", tmp_path / "t", "--json", tmp_path / "s8.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s8.json").read_text())
    assert s["psnr"] == pytest.approx(np.mean(err), abs=1e-9)
    assert 58 < s["psnr"] < 60 and 0 < s["l1"] < 1 / 255


def test_images_under_the_ssim_window_are_named_and_the_rest_scored(tmp_path):
    """Issue 14 fault 2: an 8x8 and a 200x6 pair beside a 64x64 one: one line for each tiny
    file, L1/PSNR for all three, SSIM over the one pair where it is defined."""
    big_p, big_t = textured(1, 64, 64), textured(2, 64, 64)
    save(tmp_path / "p" / "big.png", big_p)
    save(tmp_path / "t" / "big.png", big_t)
    for name, (h, w) in (("small.png", (8, 8)), ("strip.png", (6, 200))):
        save(tmp_path / "p" / name, textured(3, h, w))
        save(tmp_path / "t" / name, textured(3, h, w))
    r = CliRunner().invoke(main, [str(tmp_path / "p"), str(tmp_path / "t"), "--quiet",
                                  "--csv", str(tmp_path / "m.csv")])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    notes = [ln for ln in r.output.splitlines() if ln.startswith("note:")]
    assert len(notes) == 2
    assert "small.png: 8x8 is smaller" in notes[0] and "strip.png: 200x6 is smaller" in notes[1]
    rows = {row["pred"]: row for row in csv.DictReader(open(tmp_path / "m.csv"))}
    assert rows["small.png"]["ssim"] == "" and float(rows["small.png"]["l1"]) == 0
    assert float(rows["big.png"]["ssim"]) == pytest.approx(ssim(big_p, big_t), abs=1e-6)
    assert f"SSIM {ssim(big_p, big_t):.4f} (over 1 images)" in r.output
    want_psnr = (psnr(big_p, big_t) + 2 * PSNR_CAP) / 3
    assert f"PSNR {want_psnr:.2f} dB" in r.output


def test_every_unreadable_image_is_named_and_nothing_is_written(pairs, tmp_path):
    # Not only the first one found: a truncated prediction and an empty target, both named.
    preds, targets = pairs
    (preds / "a.png").write_bytes((preds / "a.png").read_bytes()[:200])
    (targets / "sub" / "b.png").write_bytes(b"")
    out_json = tmp_path / "m.json"
    r = invoke(preds, targets, "--json", out_json)
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines[0] == "Error: 2 of 6 images are unusable; fix or remove them:", r.output
    assert len(lines) == 3 and lines[1].startswith(f"  {preds / 'a.png'}: cannot decode: ")
    assert lines[2] == f"  {targets / 'sub' / 'b.png'}: empty file (0 bytes)"
    assert not out_json.exists()


# ---------------------------------------------------------------------------- intent


@pytest.fixture
def ab_set(tmp_path):
    """A|B targets and predictions equal to their B half (an AtoB model's perfect output)."""
    for i, rel in enumerate(["1.png", "2.png", "sub/3.png"]):
        a, b = textured(i, 32, 32), textured(10 + i, 32, 32)
        save(tmp_path / "ab" / rel, np.concatenate([a, b], 1))
        save(tmp_path / "pred" / rel, b)
    return tmp_path


def test_direction_comes_from_the_model_or_its_run(ab_set):
    from onnx_models import identity_model

    model = identity_model(ab_set / "m.onnx", image_size=32, direction="AtoB")
    r = invoke(ab_set / "pred", "--targets-from", ab_set / "ab", "--model", model)
    assert r.exit_code == 0, r.output
    assert f"direction AtoB (from --model {model})" in r.output
    assert "3 images" in r.output and "PSNR 100.00 dB (cap)" in r.output
    r = invoke(ab_set / "pred", "--targets-from", ab_set / "ab", "--model", model,
               "--direction", "BtoA")
    assert r.exit_code == 1 and "--direction BtoA contradicts" in r.output
    assert "translates AtoB" in r.output
    run = ab_set / "run"  # a run folder: its config.json says the direction
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"task": {"direction": "BtoA",
                                                          "color_space": "rgb"}}))
    r = invoke(ab_set / "pred", "--targets-from", ab_set / "ab", "--model", run)
    assert r.exit_code == 0 and "direction BtoA" in r.output  # scored against the A half
    assert "PSNR 100.00 dB" not in r.output
    r = invoke(ab_set / "pred", "--targets-from", ab_set / "ab")
    assert r.exit_code == 1 and "needs --direction AtoB|BtoA or --model" in r.output


def test_glob_scores_a_subset(ab_set):
    (ab_set / "pred" / "2.png").unlink()  # predictions of a subset only
    r = invoke(ab_set / "pred", "--targets-from", ab_set / "ab", "--direction", "AtoB",
               "--json", ab_set / "m.json")
    assert r.exit_code == 1 and "have no prediction" in r.output  # still no silent subset
    r = invoke(ab_set / "pred", "--targets-from", ab_set / "ab", "--direction", "AtoB",
               "--glob", "sub/*", "--json", ab_set / "m.json")
    assert r.exit_code == 0, r.output
    summary = json.loads((ab_set / "m.json").read_text())
    assert (summary["count"], summary["glob"]) == (1, "sub/*")
    r = invoke(ab_set / "pred", "--targets-from", ab_set / "ab", "--direction", "AtoB",
               "--glob", "*.jpg")
    assert r.exit_code == 1 and "no images matching --glob '*.jpg'" in r.output


def test_predictions_named_after_their_targets_whole_name_pair_with_them(tmp_path):
    """p2p-translate names the outputs of x.png and x.jpg x.png.png and x.jpg.png: each
    pairs with the target whose whole name it extends, plain stems as before."""
    from p2p.runtime.evaluate import pair_files

    for i, name in enumerate(("x.png", "x.jpg", "y.png")):
        save(tmp_path / "t" / name, textured(i, 32, 32))
        pred = np.asarray(Image.open(tmp_path / "t" / name))  # the JPEG as decoded
        save(tmp_path / "p" / (name + ".png" if name.startswith("x") else name), pred)
    assert sorted(pair_files(tmp_path / "p", tmp_path / "t")) == [
        (Path("x.jpg.png"), Path("x.jpg")), (Path("x.png.png"), Path("x.png")),
        (Path("y.png"), Path("y.png"))]
    r = invoke(tmp_path / "p", tmp_path / "t", "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["count"] == 3 and s["psnr"] == 100, s


def test_negative_workers_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from p2p.cli.eval import main as eval_main

    (tmp_path / "a").mkdir()
    r = CliRunner().invoke(eval_main, [str(tmp_path / "a"), str(tmp_path / "a"), "--workers", "-1"])
    assert r.exit_code == 2 and "-1 is not in the range x>=0" in r.output

"""p2p-process on tiny generated images: each operation, bad files, existing outputs, safety."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from blocking import run_without
from p2p.cli.process import main
from p2p.runtime import images
from p2p.trainer.process import split_assignment

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def bands(w: int, h: int) -> np.ndarray:
    """Red | blue | green vertical bands; the middle band is exactly the centre square."""
    a = np.zeros((h, w, 3), np.uint8)
    side = min(w, h)
    a[:, :] = RED
    a[:, (w - side) // 2:(w + side) // 2] = BLUE
    a[:, (w + side) // 2:] = GREEN
    return a


def add_bad_files(folder: Path) -> None:
    (folder / "garbage.jpg").write_bytes(b"this is not a jpeg")
    good = folder / "trunc_src.png"
    save(good, bands(40, 20))
    (folder / "truncated.png").write_bytes(good.read_bytes()[:60])
    good.unlink()


def invoke(*args):
    return CliRunner().invoke(main, [*args, "--quiet"])


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".")]


@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    save(d / "wide.png", bands(120, 60))
    save(d / "sub" / "tall.png", bands(60, 120))
    rgba = np.zeros((50, 50, 4), np.uint8)  # fully transparent: composited on white
    save(d / "alpha.png", rgba)
    (d / "notes.txt").write_text("not an image, ignored")
    add_bad_files(d)
    return d


def test_resize_crop_bad_files_and_existing_output(photos, tmp_path):
    out = tmp_path / "out"
    sentinel = save(out / "alpha.png", np.full((8, 8, 3), 7, np.uint8))
    before = sentinel.read_bytes()
    inputs_before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}

    r = invoke("resize", "--input", str(photos), "--output", str(out), "--size", "32",
               "--workers", "2")
    assert r.exit_code == 1, r.output
    assert "2 written, 1 skipped" in r.output and "2 failed" in r.output
    assert "garbage.jpg" in r.output and "truncated.png" in r.output
    wide = np.asarray(Image.open(out / "wide.png"))
    assert wide.shape == (32, 32, 3)
    assert np.abs(wide.astype(int) - BLUE).max() <= 2  # only the centre band survives the crop
    tall = np.asarray(Image.open(out / "sub" / "tall.png"))
    assert tall.shape == (32, 32, 3) and np.abs(tall.astype(int) - BLUE).max() <= 2
    assert sentinel.read_bytes() == before  # existing output left alone
    assert not (out / "garbage.png").exists() and not (out / "notes.png").exists()
    assert {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()} == inputs_before
    assert no_temp_files(out)

    r = invoke("resize", "--input", str(photos), "--output", str(out), "--size", "32",
               "--overwrite")
    assert "3 written, 0 skipped" in r.output
    assert np.asarray(Image.open(sentinel)).tolist() == [[list(WHITE)] * 32] * 32


def test_resize_pad_uses_white(tmp_path):
    src = tmp_path / "in"
    save(src / "wide.png", np.zeros((30, 60, 3), np.uint8))  # black, 2:1
    r = invoke("resize", "--input", str(src), "--output", str(tmp_path / "o"), "--size", "60",
               "--pad")
    assert r.exit_code == 0, r.output
    a = np.asarray(Image.open(tmp_path / "o" / "wide.png")).astype(int)
    assert a.shape == (60, 60, 3)
    assert (a[:10] == 255).all() and (a[-10:] == 255).all()  # white bands top and bottom
    assert (a[20:40] == 0).all()  # the image itself, centred


def test_refuses_output_equal_to_inside_or_around_input(photos, tmp_path):
    listing = sorted(p for p in photos.rglob("*"))
    for out in (photos, photos / "sub" / "x", tmp_path):
        r = invoke("grayscale", "--input", str(photos), "--output", str(out))
        assert r.exit_code == 1
        assert r.output.count("\n") == 1 and "must not be" in r.output
    assert sorted(p for p in photos.rglob("*")) == listing
    r = invoke("grayscale", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"))
    assert r.exit_code == 1 and "no such input folder" in r.output


def test_grayscale_edges_blank(photos, tmp_path):
    r = invoke("grayscale", "--input", str(photos), "--output", str(tmp_path / "g"))
    assert r.exit_code == 1 and "3 written" in r.output and "2 failed" in r.output
    g = Image.open(tmp_path / "g" / "wide.png")
    assert g.mode == "L" and g.size == (120, 60)
    assert np.array_equal(np.asarray(g), np.asarray(Image.open(photos / "wide.png").convert("L")))

    shapes = tmp_path / "shapes"
    square = np.full((64, 64, 3), 255, np.uint8)
    square[16:48, 16:48] = 40
    save(shapes / "square.png", square)
    save(shapes / "flat.png", np.full((64, 64, 3), 128, np.uint8))
    r = invoke("edges", "--input", str(shapes), "--output", str(tmp_path / "e"))
    assert r.exit_code == 0, r.output
    e = np.asarray(Image.open(tmp_path / "e" / "square.png"))
    assert e.dtype == np.uint8 and e.ndim == 2 and set(np.unique(e)) == {0, 255}
    black = np.argwhere(e == 0)  # black edges on white, only around the square's outline
    assert black[:, 0].min() >= 13 and black[:, 0].max() <= 50
    assert (e[:8] == 255).all() and (e[28:36, 28:36] == 255).all()
    assert e[14:18, 30].min() == 0 and e[30, 46:50].min() == 0
    assert (np.asarray(Image.open(tmp_path / "e" / "flat.png")) == 255).all()

    r = invoke("blank", "--input", str(shapes), "--output", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    b = np.asarray(Image.open(tmp_path / "b" / "flat.png"))
    assert (b[16:48, 16:48] == 255).all()
    assert (b[:16] == 128).all() and (b[48:] == 128).all() and (b[:, :16] == 128).all()


def test_combine_pairs_sizes_and_unmatched_names(tmp_path):
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "AB"
    rng = np.random.default_rng(0)
    imgs = {n: rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for n in ("1", "2")}
    for n, arr in imgs.items():
        save(a / f"{n}.png", arr)
        save(b / f"{n}.png", 255 - arr)
    save(a / "3.png", bands(24, 16))
    save(b / "3.png", bands(16, 16))  # size mismatch
    save(a / "only_a.png", bands(24, 16))
    save(b / "only_b.png", bands(24, 16))
    save(a / "4.png", bands(24, 16))
    Image.fromarray(bands(24, 16)).save(b / "4.jpg")  # matches across extensions
    add_bad_files(a)
    (b / "garbage.jpg").write_bytes(b"also not a jpeg")

    r = invoke("combine", "--a", str(a), "--b", str(b), "--output", str(out))
    assert r.exit_code == 1
    assert "3 written" in r.output and "5 failed" in r.output, r.output
    assert "size mismatch" in r.output and "24x16" in r.output and "16x16" in r.output
    assert "only_a.png: no B image" in r.output and "only_b.png: no A image" in r.output
    assert "truncated.png: no B image" in r.output
    for n, arr in imgs.items():
        ab = np.asarray(Image.open(out / f"{n}.png"))
        assert ab.shape == (16, 48, 3)
        assert np.array_equal(ab[:, :24], arr) and np.array_equal(ab[:, 24:], 255 - arr)
    assert (out / "4.png").exists() and not (out / "3.png").exists()
    assert no_temp_files(out)


def test_split_is_deterministic_copies_and_reports_bad_files(tmp_path):
    src = tmp_path / "ab"
    for i in range(20):
        save(src / f"{i:02d}.png", np.full((8, 16, 3), i, np.uint8))
    add_bad_files(src)  # 22 files: 2 bad

    def run_split(out, seed, ratios="0.8,0.1,0.1"):
        r = invoke("split", "--input", str(src), "--output", str(out), "--ratios", ratios,
                   "--seed", str(seed))
        parts = {d.name: sorted(p.name for p in d.iterdir()) for d in out.iterdir()}
        return r, parts

    r, first = run_split(tmp_path / "s1", 7)
    assert r.exit_code == 1 and "20 written" in r.output and "2 failed" in r.output
    assert sum(len(v) for v in first.values()) == 20
    assert set(first) == {"train", "val", "test"}
    # 22 names: rounded cumulative cuts at 17.6 -> 18 and 19.8 -> 20 give 18 / 2 / 2.
    counts = {k: len(v) for k, v in split_assignment(
        [Path(f"{i}") for i in range(22)], (0.8, 0.1, 0.1), 7).items()}
    assert counts == {"train": 18, "val": 2, "test": 2}
    _, again = run_split(tmp_path / "s2", 7)
    assert again == first
    _, other = run_split(tmp_path / "s3", 8)
    assert other != first
    part, name = next((k, v[0]) for k, v in first.items() if v)
    assert (tmp_path / "s1" / part / name).read_bytes() == (src / name).read_bytes()

    r, _ = run_split(tmp_path / "s1", 7)  # rerun: everything already there
    assert "0 written, 20 skipped" in r.output
    # another seed into the same folder would leave images in two splits: refused, even
    # with --overwrite, nothing written
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "s1").rglob("*"))
    for extra in ([], ["--overwrite"]):
        r = invoke("split", "--input", str(src), "--output", str(tmp_path / "s1"), "--seed", "8",
                   *extra)
        assert r.exit_code != 0 and "an earlier split (other --ratios or --seed, or other " \
            "images in the input) put this image there; this one puts it in " in r.output, r.output
        assert "it would be in two splits, a held-out image trained on" in r.output
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "s1").rglob("*")) == before

    r = invoke("split", "--input", str(src), "--output", str(tmp_path / "s4"),
               "--ratios", "0.9,0.2")
    assert r.exit_code != 0 and "sum to 1" in r.output
    assert not (tmp_path / "s4").exists()
    r = invoke("split", "--input", str(src), "--output", str(tmp_path / "s4"), "--ratios", "a,b")
    assert r.exit_code != 0 and "--ratios" in r.output


def test_process_module_does_not_import_torch_or_cv2():
    """Imported where torch and OpenCV cannot load (a fresh interpreter, both blocked)."""
    out = run_without(["torch", "cv2"], "import p2p.trainer.process, p2p.cli.process, "
                      "p2p.cli.eval; print('ok')")
    assert out.returncode == 0 and out.stdout.split() == ["ok"], out.stderr


def _doc_commands(section: str) -> list[list[str]]:
    """The commands of one docs/walkthrough.md section, as a user would paste them."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "walkthrough.md").read_text()
    body = text.split(f"### {section}", 1)[1].split("\n### ", 1)[0]
    block = body.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.parametrize("section", ["Two folders", "A folder of photos"])
def test_walkthrough_process_commands_run_as_written(section, tmp_path, monkeypatch):
    """docs/walkthrough.md stays true: its p2p-process commands build a p2p-train layout."""
    rng = np.random.default_rng(0)
    for i in range(10):
        photo = rng.integers(0, 256, (60 + i, 80, 3), dtype=np.uint8)
        if section == "Two folders":  # same names, different extensions
            save(tmp_path / "photos" / "A" / f"{i:04d}.png", photo)
            save(tmp_path / "photos" / "B" / f"{i:04d}.jpg", 255 - photo)
        else:
            save(tmp_path / "photos" / f"{i:04d}.{'jpg' if i % 2 else 'png'}", photo)
    monkeypatch.chdir(tmp_path)
    commands = _doc_commands(section)
    assert [c[0] for c in commands][-1] == "p2p-train"
    for cmd in commands:
        if cmd[0] == "p2p-process":
            r = CliRunner().invoke(main, cmd[1:] + ["--quiet"])
            assert r.exit_code == 0, (cmd, r.output)
    data = Path(commands[-1][commands[-1].index("--data") + 1])
    train = sorted((data / "train").iterdir())
    assert len(train) in (8, 9) and (data / "val").is_dir()
    assert Image.open(train[0]).size == (512, 256)  # A|B, each 256x256


def test_resize_keeps_label_maps_crisp_and_blends_photos(tmp_path):
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (12, 3), dtype=np.uint8)
    labels = palette[np.repeat(np.repeat(rng.integers(0, 12, (9, 9)), 7, 0), 7, 1)]  # 63 px
    save(tmp_path / "in" / "labels.png", labels)
    photo = rng.integers(0, 256, (63, 63, 3), dtype=np.uint8)
    save(tmp_path / "in" / "photo.png", photo)
    r = CliRunner().invoke(main, ["resize", "--input", str(tmp_path / "in"), "--output",
                                  str(tmp_path / "out"), "--size", "40", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "1 label map(s) resized nearest-neighbour" in r.output

    def colours(p):
        return len(np.unique(np.asarray(Image.open(p)).reshape(-1, 3), axis=0))

    assert colours(tmp_path / "out" / "labels.png") == 12  # no blended class colours
    assert colours(tmp_path / "out" / "photo.png") > 1000  # bicubic, as before
    r = CliRunner().invoke(main, ["resize", "--input", str(tmp_path / "in"), "--output",
                                  str(tmp_path / "blend"), "--size", "40", "--resample",
                                  "bicubic", "--quiet"])
    assert r.exit_code == 0 and colours(tmp_path / "blend" / "labels.png") > 12


def test_resize_tells_greyscale_photos_from_greyscale_label_maps(tmp_path, facades):
    """An 8-bit greyscale photo has at most 256 levels, like a label map: the count alone
    resized real photos nearest-neighbour (aliased). A real facades photo in greyscale
    (8-bit, 16-bit from it: still 256 levels, and with 78% of it white: mostly flat) is
    blended; a 10-class grey label map and an edge map stay crisp."""
    ab = Image.open(facades / "val" / "1.jpg")
    grey = np.asarray(ab.crop((0, 0, ab.width // 2, ab.height)).convert("L"))
    rng = np.random.default_rng(0)
    ids = (np.repeat(np.repeat(rng.integers(0, 10, (8, 8)), 32, 0), 32, 1) * 20).astype(np.uint8)
    edge = np.full((256, 256), 255, np.uint8)
    edge[::16] = 0
    save(tmp_path / "in" / "photo8.png", grey)
    white = grey.copy()
    white[:200] = 255  # a photo on a white background: mostly flat, still a photo
    save(tmp_path / "in" / "white.png", white)
    tifffile.imwrite(tmp_path / "in" / "photo16.tif", grey.astype(np.uint16) * 257)
    save(tmp_path / "in" / "ids.png", ids)
    save(tmp_path / "in" / "edges.png", edge)
    r = CliRunner().invoke(main, ["resize", "--input", str(tmp_path / "in"), "--output",
                                  str(tmp_path / "out"), "--size", "100", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "2 label map(s) resized nearest-neighbour" in r.output
    out = {p.stem: images.decode(p)[..., 0] for p in (tmp_path / "out").iterdir()}
    assert len(np.unique(out["ids"])) == 10 and set(np.unique(out["edges"])) <= {0, 255}
    expected = images.resize(grey[..., None], (100, 100))[..., 0]  # bicubic, as documented
    np.testing.assert_array_equal(out["photo8"], expected)
    np.testing.assert_array_equal(out["white"], images.resize(white[..., None], (100, 100))[..., 0])
    assert np.abs(out["photo16"] / 257.0 - expected).max() <= 1.0


def test_edges_refusal_names_edges(tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "t4.tif", np.zeros((32, 32, 4), np.uint8),
                     photometric="rgb", extrasamples=["unspecified"])
    r = invoke("edges", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert r.exit_code == 1 and "t4.tif: 4 bands: edges takes greyscale or RGB images" in r.output


def test_split_halves_cuts_ab_images_into_a_and_b(tmp_path):
    a, b = bands(20, 20), np.full((20, 20, 3), 7, np.uint8)
    save(tmp_path / "ab" / "sub" / "1.jpg", np.concatenate([a, b], 1)[:, :, :])
    save(tmp_path / "ab" / "2.png", np.concatenate([a, b], 1))
    save(tmp_path / "ab" / "wide.png", np.concatenate([a, b, b], 1))  # 3:1: not a pair
    r = invoke("split", "--halves", "--input", str(tmp_path / "ab"), "--output",
               str(tmp_path / "out"))
    assert r.exit_code == 1
    assert "split: 2 written" in r.output
    assert "wide.png: 60x20 is not 2:1" in r.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/A/2.png")), a)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/B/2.png")), b)
    assert Image.open(tmp_path / "out/A/sub/1.png").size == (20, 20)
    assert Image.open(tmp_path / "out/B/sub/1.png").size == (20, 20)
    assert not (tmp_path / "out" / "A" / "wide.png").exists()
    assert no_temp_files(tmp_path / "out")
    r = invoke("split", "--halves", "--ratios", "0.5,0.5", "--input", str(tmp_path / "ab"),
               "--output", str(tmp_path / "out2"))
    assert r.exit_code == 2 and "--ratios and --seed only apply" in r.output


def test_same_stem_sources_follow_translates_naming_rule(tmp_path):
    """pr/in holds v01.png and v01.jpg: p2p-translate's rule names them v01.png.png and
    v01.jpg.png (each its own), in every operation; a third file that still shares a name
    fails alone, naming the real output paths (A/ and B/ for --halves)."""
    ab = np.concatenate([bands(20, 20), np.full((20, 20, 3), 7, np.uint8)], 1)
    for name in ("v01.png", "v01.jpg", "v02.png"):
        save(tmp_path / "in" / name, ab)
    r = invoke("split", "--halves", "--input", str(tmp_path / "in"), "--output",
               str(tmp_path / "halves"))
    assert r.exit_code == 0 and "split: 3 written" in r.output, r.output
    for side in "AB":
        assert sorted(p.name for p in (tmp_path / "halves" / side).iterdir()) == [
            "v01.jpg.png", "v01.png.png", "v02.png"]
    r = invoke("grayscale", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "g"))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "v01.jpg.png", "v01.png.png", "v02.png"]
    save(tmp_path / "in" / "v01.png.png", ab)
    r = invoke("split", "--halves", "--input", str(tmp_path / "in"), "--output",
               str(tmp_path / "h2"))
    out = tmp_path / "h2"
    assert r.exit_code == 1 and (
        f"{tmp_path / 'in/v01.png.png'}: same output {out / 'A/v01.png.png'} and "
        f"{out / 'B/v01.png.png'} as {tmp_path / 'in/v01.png'}; rename one of them"
        in r.output), r.output


def test_nan_ratios_are_one_line(tmp_path):
    save(tmp_path / "in" / "x.png", bands(8, 8))
    for ratios in ("nan,1", "0.5,0.5,nan"):
        r = invoke("split", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                   "--ratios", ratios)
        assert r.exit_code != 0 and f"--ratios {ratios}: need 2 or 3 non-negative" in r.output
        assert "Traceback" not in r.output


def test_split_halves_keeps_float_and_n_band_tiffs(tmp_path):
    """Halves were PNG whatever the source: float and 4-band TIFF pairs failed ('png cannot
    hold float32 samples: use --format tif', a flag p2p-process does not have)."""
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    f = rng.random((16, 32), dtype=np.float32)
    m4 = rng.integers(0, 256, (16, 32, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in" / "f.tif", f)
    tifffile.imwrite(tmp_path / "in" / "m4.tif", m4, photometric="rgb",
                     extrasamples=["unspecified"])
    r = invoke("split", "--halves", "--input", str(tmp_path / "in"), "--output",
               str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(images.decode(tmp_path / "out" / "A" / "f.tif")[..., 0],
                                  f[:, :16])
    np.testing.assert_array_equal(images.decode(tmp_path / "out" / "B" / "m4.tif"), m4[:, 16:])

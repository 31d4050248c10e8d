"""p2p-translate end to end: files, summary, exit codes, resume after kill -9, gallery."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnx_models import identity_model, slow_model
from p2p.cli.translate import main
from p2p.runtime.files import TMP_SUFFIX


def translate(*args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--quiet"])


def noise(path: Path, w=32, h=32, seed=0) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return a


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"dyn": identity_model(d / "dyn.onnx", dynamic_size=True, size_multiple=8),
            "atob": identity_model(d / "atob.onnx", image_size=32),
            "btoa": identity_model(d / "btoa.onnx", image_size=32, direction="BtoA")}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("P2P_CACHE", str(tmp_path_factory.getbasetemp() / "p2p-cache"))


def test_folder_tree_mirrored_in_order_with_a_ragged_last_batch(models, tmp_path):
    src = tmp_path / "in"
    want = {f"{i}.png": noise(src / f"{i}.png", seed=i) for i in range(4)}
    want.update({f"sub/{i}.png": noise(src / "sub" / f"{i}.png", seed=10 + i) for i in range(3)})
    want["sub/deep/odd.png"] = noise(src / "sub/deep/odd.png", w=20, h=13, seed=99)
    r = translate(src, "--model", models["dyn"], "--batch-size", "3", "--split", "none")
    assert r.exit_code == 0, r.output
    assert "translated 8, skipped 0, failed 0" in r.stdout
    out = tmp_path / "in-translated"
    for rel, a in want.items():  # identity model: each output is exactly its own input
        np.testing.assert_array_equal(np.asarray(Image.open(out / rel)), a, err_msg=rel)


def test_bad_files_fail_alone_and_the_run_goes_on(models, tmp_path):
    src = tmp_path / "mixed"
    good = [noise(src / "a.png", seed=1), noise(src / "c.jpg", seed=2)]
    (src / "b.png").write_text("not an image")
    (src / "d.jpg").write_bytes((src / "c.jpg").read_bytes()[:200])
    (src / "notes.txt").write_text("ignored: not an image type")
    r = translate(src, "--model", models["dyn"], "-o", tmp_path / "out", "--split", "none")
    assert r.exit_code == 1
    assert "translated 2, skipped 0, failed 2" in r.stdout
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith("failed: ")]
    assert len(failed) == 2
    assert "b.png: not an image Pillow can read" in failed[0]
    assert "d.jpg: cannot decode" in failed[1]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/a.png")), good[0])
    assert (tmp_path / "out/c.png").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]


def test_existing_outputs_are_skipped_unless_overwrite(models, tmp_path):
    for i in range(3):
        noise(tmp_path / "in" / f"{i}.png", seed=i)
    args = [tmp_path / "in", "--model", models["atob"], "--split", "none"]
    assert translate(*args).exit_code == 0
    stamp = (tmp_path / "in-translated/0.png").stat().st_mtime_ns
    r = translate(*args)
    assert r.exit_code == 0 and "translated 0, skipped 3, failed 0" in r.stdout
    assert (tmp_path / "in-translated/0.png").stat().st_mtime_ns == stamp
    r = translate(*args, "--overwrite")
    assert "translated 3, skipped 0, failed 0" in r.stdout


def test_cuda_on_this_machine_fails_at_once_and_writes_nothing(models, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    noise(tmp_path / "in" / "a.png")
    r = translate(tmp_path / "in", "--model", models["atob"], "--provider", "cuda")
    assert r.exit_code == 1
    assert "has no CUDA" in r.output and "p2p[gpu]" in r.output
    r = translate(tmp_path / "in", "--model", models["atob"], "--provider", "cuda",
                  "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_usage_errors_exit_2(models, tmp_path):
    noise(tmp_path / "a.png")
    assert translate(tmp_path / "a.png", "--model", models["atob"], "--provider", "metal").exit_code == 2
    assert translate().exit_code == 2
    assert translate(tmp_path / "missing.png", "--model", models["atob"]).exit_code == 2


def test_split_auto_on_dataset_images_and_html_gallery(models, tmp_path):
    src = tmp_path / "val"
    pairs = [noise(src / f"{i}.png", w=64, h=32, seed=i) for i in (1, 2, 10)]
    noise(src / "square.png", w=32, h=32, seed=5)
    r = translate(src, "--model", models["btoa"], "--html")
    assert r.exit_code == 0, r.output
    out = tmp_path / "val-translated"
    for i, pair in zip((1, 2, 10), pairs):  # BtoA: the right half is the input
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{i}.png")), pair[:, 32:])
    page = (out / "index.html").read_text()
    rows = page.split("<tr>")[2:]
    assert [re.search(r"<td>(.*?)</td>", row).group(1) for row in rows] == \
        ["1.png", "2.png", "10.png", "square.png"]
    # Issue 14 fault 7: the gallery stands on its own. Moved elsewhere, every file it
    # references is still there, inside its folder, and each row has its three columns.
    moved = shutil.move(out, tmp_path / "elsewhere" / "gallery")
    shutil.rmtree(src)  # the inputs are gone too
    page = (Path(moved) / "index.html").read_text()
    urls = re.findall(r'src="([^"]+)"', page)
    assert len(urls) == 3 * 3 + 2  # three pairs: input | output | target; square: no target
    for url in urls:
        assert not unquote(url).startswith(("/", "..")), url
        assert (Path(moved) / unquote(url)).is_file(), url
    rows = page.split("<tr>")[2:]
    cells = [re.findall(r'src="([^"]+)"', row) for row in rows]
    assert cells[0] == [".gallery/1.png.input.jpg", "1.png", ".gallery/1.png.target.jpg"]
    assert cells[3] == [".gallery/square.png.input.jpg", "square.png"]
    # The thumbnails are the halves the model saw: input = right half (BtoA), target = left.
    shown = np.asarray(Image.open(Path(moved) / cells[0][0]), np.int16)
    target = np.asarray(Image.open(Path(moved) / cells[0][2]), np.int16)
    assert shown.shape == target.shape == (32, 32, 3)
    right, left = pairs[0][:, 32:], pairs[0][:, :32]  # noise: JPEG keeps only so much of it
    assert np.abs(shown - right).mean() + 25 < np.abs(shown - left).mean()
    assert np.abs(target - left).mean() + 25 < np.abs(target - right).mean()


def test_real_facades_pairs(facades, models, tmp_path):
    files = [facades / "val" / f"{i}.jpg" for i in (1, 2)]
    r = translate(*files, "--model", models["btoa"], "-o", tmp_path / "out", "--model-size")
    assert r.exit_code == 0, r.output
    for f in files:
        right = Image.open(f).convert("RGB").crop((256, 0, 512, 256)).resize((32, 32),
                                                                             Image.BICUBIC)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{f.stem}.png")),
                                      np.asarray(right))


def test_formats_model_size_and_glob(models, tmp_path):
    noise(tmp_path / "in/a.jpg", w=50, h=40)
    noise(tmp_path / "in/b.png", w=50, h=40)
    r = translate(tmp_path / "in", "--model", models["atob"], "--format", "webp", "--glob", "*.jpg",
                  "--split", "none")
    assert r.exit_code == 0 and "translated 1," in r.stdout
    out = Image.open(tmp_path / "in-translated/a.webp")
    assert out.format == "WEBP" and out.size == (50, 40)
    r = translate(tmp_path / "in", "--model", models["atob"], "--format", "jpg", "--model-size",
                  "-o", tmp_path / "small")
    assert Image.open(tmp_path / "small/b.jpg").size == (32, 32)


def test_outputs_stay_inside_output_and_names_never_collide(models, tmp_path):
    noise(tmp_path / "x.png")
    noise(tmp_path / "d/a.jpg", seed=1)
    noise(tmp_path / "d/a.png", seed=2)
    dotted = tmp_path / "d" / ".." / "x.png"
    r = translate(dotted, tmp_path / "d", "--model", models["atob"], "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    files = sorted(p.relative_to(tmp_path / "out").as_posix()
                   for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["d/a.jpg.png", "d/a.png.png", "x.png"]
    # A link inside the output folder that points elsewhere is refused, not followed.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "d").symlink_to(outside)
    r = translate(tmp_path / "d", tmp_path / "x.png", "--model", models["atob"],
                  "-o", tmp_path / "o2")
    assert r.exit_code == 1 and "escapes the output folder" in r.stdout
    assert "(a link inside it points elsewhere); not written" in r.stdout
    assert list(outside.iterdir()) == []


def test_two_inputs_writing_one_output_refuse_the_run_before_the_model_loads(
        models, tmp_path, monkeypatch):
    """a/x.png b/x.png -o out: both would be out/x.png. Which one wins would be arbitrary, so
    the run is refused in one line naming both and the destination, before the model loads
    and before anything is written."""
    from p2p.runtime import pipeline

    loaded = []
    monkeypatch.setattr(pipeline, "Engine", lambda *a, **k: loaded.append(a) or 1 / 0)
    for d in "abc":
        noise(tmp_path / d / "x.png", seed=ord(d))
    out = tmp_path / "out"
    r = translate(tmp_path / "a/x.png", tmp_path / "c/x.png", tmp_path / "b/x.png",
                  "--model", models["atob"], "-o", out)
    assert r.exit_code == 1, r.output
    assert r.output == (f"Error: {tmp_path / 'a/x.png'} and {tmp_path / 'c/x.png'} would both "
                        f"be written to {out / 'x.png'}; nothing was run: translate them in "
                        "separate runs, or into different --output folders\n")
    assert loaded == [] and not out.exists()
    # Files of one folder and the same file named twice are not collisions.
    monkeypatch.undo()
    noise(tmp_path / "a" / "x.jpg", seed=5)
    r = translate(tmp_path / "a/x.png", tmp_path / "a/x.png", tmp_path / "a",
                  "--model", models["atob"], "--split", "none")
    assert r.exit_code == 0 and "translated 2, skipped 0, failed 0" in r.output, r.output
    assert sorted(p.name for p in (tmp_path / "a-translated").iterdir()) == ["x.jpg.png",
                                                                           "x.png.png"]
    # Their folders named instead: each mirrored under its own name.
    r = translate(tmp_path / "a", tmp_path / "b", "--model", models["atob"], "-o", out,
                  "--split", "none")
    assert r.exit_code == 0, r.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a/x.jpg.png", "a/x.png.png", "b/x.png"]


def test_default_model_is_the_newest_export_under_runs(models, tmp_path, monkeypatch):
    for name in ("old", "new"):
        d = tmp_path / "runs" / name / "export"
        d.mkdir(parents=True)
        (d / f"{name}.onnx").write_bytes(models["atob"].read_bytes())
        time.sleep(0.02)
    noise(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    r = translate("a.png")
    assert r.exit_code == 0, r.output
    assert f"model {Path('runs/new/export/new.onnx')}" in r.output
    monkeypatch.chdir(tmp_path / "runs" / "old")
    r = translate(tmp_path / "a.png")
    assert r.exit_code == 1 and "no --model given" in r.output


@pytest.mark.slow
def test_resume_after_kill_9_leaves_no_partial_files(tmp_path):
    model = slow_model(tmp_path / "slow.onnx", image_size=64, size_multiple=64)
    n = 160
    for i in range(n):
        noise(tmp_path / "in" / f"{i}.png", w=64, h=64, seed=i)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "p2p.cli.translate", str(tmp_path / "in"), "--model", str(model),
           "-o", str(out), "--batch-size", "4", "--quiet"]
    env = {**os.environ, "P2P_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 8:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list(out.glob("*.png"))
    assert 0 < len(done) < n, "the run was not killed mid-way"
    for f in done:  # every file under its final name is complete
        with Image.open(f) as im:
            im.load()
            assert im.size == (64, 64)
    # What kill -9 can leave mid-write: a temp file of the dead process; a live one's is kept.
    (out / f".7.png.{proc.pid}.1{TMP_SUFFIX}").write_bytes(b"torn")
    live = out / f".8.png.{os.getpid()}.1{TMP_SUFFIX}"
    live.write_bytes(b"in progress elsewhere")
    r = translate(tmp_path / "in", "--model", model, "-o", out, "--batch-size", "4")
    assert r.exit_code == 0, r.output
    assert live.exists()
    live.unlink()
    assert f"translated {n - len(done)}, skipped {len(done)}, failed 0" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.png" for i in range(n))
    assert not [p for p in out.iterdir() if p.name.endswith(TMP_SUFFIX)]


def test_without_model_the_fp32_file_is_preferred_and_the_rule_said(tmp_path, monkeypatch):
    """Issue 14: after `p2p-export --fp16` the newest file is the FP16 model; without
    --model, p2p-translate and p2p-serve take the FP32 one and print which rule picked it."""
    from p2p.runtime.locate import default_model

    export = tmp_path / "runs" / "facades" / "export"
    export.mkdir(parents=True)
    fp32 = identity_model(export / "generator.onnx", dynamic_size=True)
    fp16 = identity_model(export / "generator.fp16.onnx", dynamic_size=True,
                          input_dtype="float16")
    os.utime(fp32, (1e9, 1e9))  # the FP16 file is the newer one, as after an export
    noise(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    rule = ("no --model: using runs/facades/export/generator.onnx, the newest FP32 model "
            "under runs/; pass --model to choose")
    assert default_model() == (Path("runs/facades/export/generator.onnx"), rule)
    r = translate(tmp_path / "a.png", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert rule in r.output and "model runs/facades/export/generator.onnx (" in r.output
    fp32.unlink()
    assert default_model() == (Path("runs/facades/export/generator.fp16.onnx"),
                               "no --model: using runs/facades/export/generator.fp16.onnx, "
                               "the newest model under runs/ (there is no FP32 one); pass "
                               "--model to choose")
    assert fp16.exists()


def test_without_model_an_int8_file_is_not_taken_for_fp32(tmp_path, monkeypatch):
    """An INT8 export takes float32 input too: the default rule read input_dtype and called
    a freshly written generator.int8.onnx 'the newest FP32 model'."""
    from p2p.runtime.locate import default_model

    export = tmp_path / "runs" / "facades" / "export"
    export.mkdir(parents=True)
    fp32 = identity_model(export / "generator.onnx", dynamic_size=True)
    identity_model(export / "generator.int8.onnx", dynamic_size=True, precision="int8")
    os.utime(fp32, (1e9, 1e9))  # the INT8 file is the newer one, as after --int8
    monkeypatch.chdir(tmp_path)
    assert default_model()[0] == Path("runs/facades/export/generator.onnx")


def test_an_exception_without_a_message_is_still_one_line(tmp_path, monkeypatch):
    """Issue 14: str(e) == '' made the pipeline's own error handling raise IndexError."""
    from p2p.runtime.engine import Engine

    def fail(self, x):
        raise RuntimeError()

    model = identity_model(tmp_path / "m.onnx", dynamic_size=True)
    noise(tmp_path / "in" / "a.png")
    monkeypatch.setattr(Engine, "submit", fail)  # what the pipeline calls
    r = translate(tmp_path / "in", "--model", model, "-o", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert f"failed: {tmp_path / 'in' / 'a.png'}: inference failed: RuntimeError" in r.output


def test_a_temp_named_file_with_a_huge_pid_is_not_a_crash(tmp_path):
    """Issue 14: os.kill raises OverflowError for a 'pid' no kernel can hold; such a file
    belongs to no live process, so it is removed like any stale temp file."""
    model = identity_model(tmp_path / "m.onnx", dynamic_size=True)
    noise(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    huge = out / f".a.png.{'9' * 30}.abcd1234{TMP_SUFFIX}"
    huge.write_bytes(b"?")
    r = translate(tmp_path / "in", "--model", model, "-o", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]


def test_several_files_share_their_folder_s_output_and_outputs_are_never_inputs(models,
                                                                               tmp_path):
    src = tmp_path / "dir"
    want = {n: noise(src / n, seed=i) for i, n in enumerate(["a.png", "b.png", "c.png"])}
    # What an earlier run on a single file writes: <stem>-translated beside the file.
    r = translate(src / "c.png", "--model", models["dyn"], "--split", "none")
    assert r.exit_code == 0 and (src / "c-translated" / "c.png").is_file(), r.output
    # dir/*.jpg, no --output: one dir-translated beside dir, nothing new inside dir.
    r = translate(src / "a.png", src / "b.png", "--model", models["dyn"], "--split", "none")
    assert r.exit_code == 0 and "translated 2, skipped 0, failed 0" in r.stdout, r.output
    out = tmp_path / "dir-translated"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "b.png", "c-translated", "c.png"]
    # The folder: its earlier output folder inside is skipped (and said), never translated.
    r = translate(src, "--model", models["dyn"], "--split", "none")
    assert r.exit_code == 0 and "translated 1, skipped 2, failed 0" in r.stdout, r.output
    assert f"skipped 1 earlier output folder(s) (*-translated), never inputs again: " \
           f"{src / 'c-translated'}" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    for n, a in want.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / n)), a, err_msg=n)


def test_output_names_depend_on_the_source_folder_not_on_the_selection(models, tmp_path):
    """sy holds x.jpg and x.png: each is named by its own extension in every run, whether
    --glob or the files named one by one select one of them, so the second run translates
    x.png rather than skipping it as done by x.jpg's output."""
    noise(tmp_path / "sy/x.jpg", seed=1)
    a_png = noise(tmp_path / "sy/x.png", seed=2)
    for how, first, second in (("glob", ["--glob", "*.jpg"], ["--glob", "*.png"]),
                               ("files", [], [])):
        out = tmp_path / f"out-{how}"
        srcs = ([tmp_path / "sy"], [tmp_path / "sy"]) if how == "glob" else \
            ([tmp_path / "sy/x.jpg"], [tmp_path / "sy/x.png"])
        for src, extra in zip(srcs, (first, second)):
            r = translate(*src, *extra, "--model", models["dyn"], "-o", out, "--split", "none")
            assert r.exit_code == 0 and "translated 1, skipped 0, failed 0" in r.stdout, r.output
        assert sorted(p.name for p in out.iterdir()) == ["x.jpg.png", "x.png.png"], how
        np.testing.assert_array_equal(np.asarray(Image.open(out / "x.png.png")), a_png)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "x.jpg.png")),
                                      np.asarray(Image.open(tmp_path / "sy/x.jpg")))


def test_a_file_named_with_its_folder_is_one_job_where_the_folder_puts_it(models, tmp_path):
    noise(tmp_path / "a/x.png")
    noise(tmp_path / "a/y.png", seed=1)
    out = tmp_path / "col4"
    r = translate(tmp_path / "a/x.png", tmp_path / "a", "--model", models["dyn"], "-o", out,
                  "--split", "none")
    assert r.exit_code == 0 and "translated 2, skipped 0, failed 0" in r.stdout, r.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a/x.png", "a/y.png"]


def test_collision_advice_fits_the_case(models, tmp_path):
    for name in ("x.png", "x.jpg", "x.png.png"):
        noise(tmp_path / "sx" / name)
    r = translate(tmp_path / "sx", "--model", models["dyn"], "-o", tmp_path / "o1")
    assert r.exit_code == 1 and r.output.startswith(
        f"Error: {tmp_path / 'sx/x.png'} and {tmp_path / 'sx/x.png.png'} would both be "
        f"written to {tmp_path / 'o1/x.png.png'}; nothing was run: rename one of them (both "
        f"are in {tmp_path / 'sx'})"), r.output
    noise(tmp_path / "a/x.png")
    noise(tmp_path / "nest/a/x.png", seed=1)
    r = translate(tmp_path / "a", tmp_path / "nest/a", "--model", models["dyn"],
                  "-o", tmp_path / "nco")
    assert r.exit_code == 1 and r.output.endswith(
        "nothing was run: translate them in separate runs, or into different --output "
        "folders\n"), r.output


def test_an_output_under_a_file_is_one_line_before_the_model_loads(models, tmp_path, monkeypatch):
    from p2p.runtime import pipeline

    loaded = []
    monkeypatch.setattr(pipeline, "Engine", lambda *a, **k: loaded.append(a) or 1 / 0)
    noise(tmp_path / "x.png")
    (tmp_path / "afile").write_text("not a folder")
    r = translate(tmp_path / "x.png", "--model", models["dyn"], "-o", tmp_path / "afile/sub")
    assert r.exit_code == 1 and loaded == [], r.output
    assert r.output == (f"Error: {tmp_path / 'afile/sub'}: cannot write into the output "
                        f"folder: {tmp_path / 'afile'} is a file, not a folder\n")

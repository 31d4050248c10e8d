"""p2p-translate on videos (issue 20): frames, timestamps and sound come back as they were.

Clips are generated with PyAV (tests/video_clips.py); the model is a tiny 3x3 conv + tanh at
64 px, run on onnxruntime FP32 (deterministic), so a 256x256 frame goes through the default
resize path both ways, as facades frames do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("av", reason="the video tests need PyAV: pip install 'p2p[video]'")

from blocking import cli_without  # noqa: E402
from onnx_models import conv_model, identity_model, slow_model  # noqa: E402
from video_clips import audio_packets, decode, make_clip  # noqa: E402

from p2p.cli.translate import main  # noqa: E402
from p2p.runtime import metrics  # noqa: E402
from p2p.runtime.files import TMP_SUFFIX  # noqa: E402

CPU = ["--provider", "cpu", "--precision", "fp32", "-q"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return conv_model(tmp_path_factory.mktemp("m") / "conv.onnx", image_size=64)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """24 frames, 256x256 H.264 at 24 frame/s with an AAC track."""
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_clip_keeps_frames_rate_timestamps_and_sound(model, clip, tmp_path):
    out = tmp_path / "out"
    r = run(clip, "--model", model, "-o", out, *CPU)
    assert r.exit_code == 0, r.output
    assert "translated 1, skipped 0, failed 0" in r.output
    assert f"{out / 'clip.mp4'}: 24 frames, libx264, audio copied" in r.output
    got, t_out, info = decode(out / "clip.mp4")  # it plays: every frame decodes
    src, t_in, src_info = decode(clip)
    assert len(got) == len(src) == 24
    assert info["rate"] == src_info["rate"] == 24
    assert t_out == t_in  # exact, as fractions of a second
    assert (info["codec"], info["size"], info["pix_fmt"]) == ("h264", (256, 256), "yuv420p")
    a_in, a_out = audio_packets(clip), audio_packets(out / "clip.mp4")
    assert len(a_in) > 30 and a_out == a_in  # same payloads at the same times
    assert temps(out) == []


def test_each_frame_matches_translating_it_as_an_image(model, clip, tmp_path):
    """The codec is the only difference from the image path: >= 30 dB on every frame."""
    frames, _, _ = decode(clip)
    stills = tmp_path / "stills"
    stills.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(stills / f"{i}.png")
    assert run(stills, "--model", model, "-o", tmp_path / "img", *CPU).exit_code == 0
    assert run(clip, "--model", model, "-o", tmp_path / "vid", *CPU).exit_code == 0
    video, _, _ = decode(tmp_path / "vid" / "clip.mp4")
    as_images = [np.asarray(Image.open(tmp_path / "img" / f"{i}.png")) for i in range(24)]
    scores = [metrics.psnr(v, a) for v, a in zip(video, as_images)]
    assert len(scores) == 24 and min(scores) >= 30.0, scores
    assert not any(v.std() < 1 for v in video)  # not a blank video that happens to match


def test_same_frame_gives_the_same_output(model, tmp_path):
    """Frames i and i+5 are identical (lossless FFV1 in and out), so their outputs must be
    bit-identical, wherever they fall in a batch of 3, and equal to a batch-of-1 run."""
    src = make_clip(tmp_path / "loop.mkv", frames=17, size=(96, 64), codec="ffv1",
                    repeat=5, audio=False)
    args = ["--model", model, "--video-codec", "ffv1", *CPU]
    assert run(src, "-o", tmp_path / "b3", "-b", 3, *args).exit_code == 0
    assert run(src, "-o", tmp_path / "b1", "-b", 1, *args).exit_code == 0
    b3, _, info = decode(tmp_path / "b3" / "loop.mkv")
    b1, _, _ = decode(tmp_path / "b1" / "loop.mkv")
    assert info["codec"] == "ffv1" and len(b3) == 17
    for i in range(17 - 5):
        assert np.array_equal(b3[i], b3[i + 5]), i
    assert all(np.array_equal(a, b) for a, b in zip(b1, b3))
    assert not np.array_equal(b3[0], b3[1])  # the frames differ: the check can fail


def test_variable_frame_rate_timestamps_are_kept(model, tmp_path):
    src = make_clip(tmp_path / "vfr.mkv", frames=12, size=128, audio=False,
                    vfr=[20, 50, 33, 100])
    assert run(src, "--model", model, "-o", tmp_path / "out", *CPU).exit_code == 0
    _, t_in, _ = decode(src)
    _, t_out, _ = decode(tmp_path / "out" / "vfr.mkv")
    steps = {b - a for a, b in zip(t_in, t_in[1:])}
    assert len(steps) == 4  # really variable
    assert t_out == t_in


def test_truncated_file_keeps_its_frames_and_names_the_bad_one(model, clip, tmp_path):
    data = clip.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[:int(len(data) * 0.6)])
    r = run(bad, "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 1, r.output
    assert "failed 1, partial videos kept 1" in r.output
    partial = tmp_path / "out" / "cut.partial.mp4"
    # One failure entry: its first line names the partial, the problems indented below.
    lines = r.output.splitlines()
    failed = [k for k, ln in enumerate(lines) if ln.startswith("failed: ")]
    assert len(failed) == 1, r.output
    assert lines[failed[0]].startswith(f"failed: {bad}: frames missing; the ")
    assert lines[failed[0]].endswith(f"frames read are kept in {partial}:")
    detail = lines[failed[0] + 1:failed[0] + 3]
    assert detail[0].startswith(f"  {bad}: frame ") and "cannot be decoded" in detail[0]
    assert "are missing: the file ends early" in detail[1], detail
    assert f"video: {partial}: " in r.output and "PARTIAL (frames missing)" in r.output
    assert not (tmp_path / "out" / "cut.mp4").exists()
    kept, t_out, _ = decode(partial)
    _, t_in, _ = decode(clip)
    assert 6 <= len(kept) < 24
    assert set(t_out) <= set(t_in)  # the kept frames keep their times
    assert audio_packets(partial)  # and the sound that was there
    # A rerun fails it again (the finished name is not there to skip), and keeps the partial.
    os.utime(partial, (1, 1))
    r = run(bad, "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 1 and "translated 0, skipped 0, failed 1" in r.output, r.output
    assert partial.stat().st_mtime > 1 and len(decode(partial)[0]) == len(kept)
    # Once the input is whole, the finished video replaces the partial.
    bad.write_bytes(data)
    r = run(bad, "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 0 and "translated 1, skipped 0, failed 0" in r.output, r.output
    assert not partial.exists() and len(decode(tmp_path / "out" / "cut.mp4")[0]) == 24


def test_animated_gif_is_a_video(model, tmp_path):
    frames = [Image.fromarray(np.full((40, 48, 3), 30 * i, np.uint8)) for i in range(5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:],
                   duration=[100, 50, 100, 200, 100], loop=0)
    frames[0].save(tmp_path / "still.gif")
    r = run(tmp_path, "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 0, r.output
    got, times, info = decode(tmp_path / "out" / "anim.mp4")
    assert len(got) == 5 and info["size"] == (48, 40)
    assert [float(t) for t in times] == [0, 0.1, 0.15, 0.25, 0.45]
    assert (tmp_path / "out" / "still.png").is_file()  # a one-frame GIF stays an image


def test_skip_and_overwrite(model, clip, tmp_path):
    out = tmp_path / "out"
    assert run(clip, "--model", model, "-o", out, *CPU).exit_code == 0
    target = out / "clip.mp4"
    os.utime(target, (1, 1))
    r = run(clip, "--model", model, "-o", out, *CPU)
    assert r.exit_code == 0 and "translated 0, skipped 1" in r.output
    assert target.stat().st_mtime == 1
    r = run(clip, "--model", model, "-o", out, "--overwrite", *CPU)
    assert r.exit_code == 0 and "translated 1, skipped 0" in r.output
    assert target.stat().st_mtime > 1 and len(decode(target)[0]) == 24


def test_codec_problems_are_one_line_and_leave_nothing(model, clip, tmp_path):
    out = tmp_path / "out"
    r = run(clip, "--model", model, "-o", out, "--video-codec", "nosuch264", *CPU)
    assert r.exit_code == 1 and "Error: --video-codec nosuch264: not a video encoder" in r.output
    # A --crf the encoder has no setting for: one line before the model loads, no output.
    r = run(clip, "--model", model, "-o", out, "--video-codec", "mpeg4", "--crf", "5", *CPU)
    assert r.exit_code == 1 and "Error: --crf: mpeg4 has no constant-quality setting" \
        in r.output, r.output
    assert "model " not in r.output and not out.exists()


def signalled_midway(tmp_path, *sigs) -> tuple[Path, Path, subprocess.Popen, str]:
    """A slow 96-frame video run, sent ``sigs`` (0.2 s apart) once its encoder has written
    something: (src, out, the finished process, its stderr)."""
    model = slow_model(tmp_path / "slow.onnx", depth=8, width=32, image_size=64)
    src = make_clip(tmp_path / "long.mp4", frames=96, size=128, audio=False)
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("p2p-translate")
    cmd = [str(exe), str(src), "--model", str(model), "-o", str(out), "-b", "2", *CPU]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the encoder has written something
            if out.is_dir() and any(p.stat().st_size > 0 for p in temps(out)):
                break
            assert proc.poll() is None, "finished before it could be killed: use a slower model"
            time.sleep(0.05)
        for k, sig in enumerate(sigs):
            if k:
                time.sleep(0.2)
            if proc.poll() is None:
                proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    return src, out, proc, err


def test_a_codec_the_container_cannot_hold_is_one_line_up_front(model, tmp_path):
    """--video-codec mjpeg for a .webm input (WebM holds VP8/VP9/AV1 only): refused once,
    before the model loads, not a failure per video after it."""
    src = make_clip(tmp_path / "a.webm", frames=4, size=64, audio=False, codec="libvpx-vp9")
    out = tmp_path / "out"
    r = run(src, "--model", model, "-o", out, "--video-codec", "mjpeg", *CPU)
    assert r.exit_code == 1, r.output
    assert "Error: --video-codec mjpeg: cannot go into .webm files" in r.output, r.output
    assert "model " not in r.output and not out.exists()


def test_killed_run_leaves_no_partial_video(tmp_path):
    """kill -9 in the middle: the target does not exist (only a hidden temp), and the next
    run removes the temp and writes the whole video."""
    src, out, _, _ = signalled_midway(tmp_path, signal.SIGKILL)
    assert not (out / "long.mp4").exists() and len(temps(out)) == 1
    model = tmp_path / "slow.onnx"
    r = run(src, "--model", model, "-o", out, *CPU)
    assert r.exit_code == 0, r.output
    assert temps(out) == [] and len(decode(out / "long.mp4")[0]) == 96


@pytest.mark.parametrize("sigs", [(signal.SIGTERM,), (signal.SIGHUP,),
                                  (signal.SIGTERM, signal.SIGTERM)],
                         ids=["term", "hup", "term-twice"])
def test_sigterm_is_an_interrupt_that_leaves_no_temp(tmp_path, sigs):
    """A plain kill (SIGTERM) or a closed terminal (SIGHUP) unwinds like Ctrl-C: exit 1,
    and the temp video is removed by the run itself, not left for the next one; a second
    kill during the clean-up does not cut it short."""
    _, out, proc, err = signalled_midway(tmp_path, *sigs)
    assert proc.returncode == 1, err
    assert "Aborted!" in err
    assert temps(out) == [] and not (out / "long.mp4").exists()


def test_without_pyav_one_line_names_the_extra(model, clip, tmp_path):
    r = cli_without(["av"], "translate", "p2p-translate", clip, "--model", model,
                    "-o", tmp_path / "out", *CPU)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == ("Error: p2p-translate needs av, which is not installed: "
                                "pip install 'p2p[video]'")
    # Images still translate without it.
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    r = cli_without(["av"], "translate", "p2p-translate", tmp_path / "x.png", "--model", model,
                    "-o", tmp_path / "img", *CPU)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "img" / "x.png").is_file()


def _matrix_clip(path, a: np.ndarray, **display) -> Path:
    """Three frames of ``a`` (H.264) with a display matrix: ``set_display_rotation``'s
    angle and flips (what phones and front cameras write)."""
    import av

    h, w = a.shape[:2]
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.options = {"crf": "0"}
        v.set_display_rotation(display.pop("angle", 0), **display)
        for i in range(3):
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts = i
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
    return path


def test_display_rotation_is_applied(tmp_path):
    """A phone clip stored landscape with a 90 degree display matrix comes out upright
    (the matrix turns it counterclockwise), as an image follows its EXIF orientation."""
    a = np.zeros((32, 64, 3), np.uint8)
    a[:8, :8] = 255  # a white top-left corner
    src = _matrix_clip(tmp_path / "phone.mp4", a, angle=90)
    model = identity_model(tmp_path / "id.onnx", dynamic_size=True)
    assert run(src, "--model", model, "-o", tmp_path / "out", *CPU).exit_code == 0
    got, _, info = decode(tmp_path / "out" / "phone.mp4")
    assert info["size"] == (32, 64) and len(got) == 3
    assert got[0][-8:, :8].mean() > 200 and got[0][:8, :8].mean() < 50  # now bottom-left


@pytest.mark.parametrize("angle,hflip,vflip,want", [
    (0, True, False, lambda a: a[:, ::-1]),  # a front camera's mirror: not a half turn
    (0, False, True, lambda a: a[::-1]),
    (90, False, False, lambda a: np.rot90(a, 1)),  # the angle is counterclockwise
    (-90, False, False, lambda a: np.rot90(a, -1)),
    (90, True, False, lambda a: np.rot90(a, 1)[:, ::-1]),  # turned, then mirrored
    (180, False, False, lambda a: a[::-1, ::-1]),
])
def test_display_matrices_turn_and_flip_as_ffmpeg_does(tmp_path, angle, hflip, vflip, want):
    """The whole display matrix by FFmpeg's own rule (fftools' autorotate), not its angle
    alone: a mirrored front-camera clip came out turned upside down."""
    a = np.zeros((32, 48, 3), np.uint8)  # (not 2:1: an A|B pair would be split)
    a[:8, :16] = 255  # a white block in the top-left corner
    a[-8:, -8:, 0] = 255  # a red one bottom-right
    src = _matrix_clip(tmp_path / "m.mp4", a, angle=angle, hflip=hflip, vflip=vflip)
    model = identity_model(tmp_path / "id.onnx", dynamic_size=True)
    r = run(src, "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 0, r.output
    got, _, _ = decode(tmp_path / "out" / "m.mp4")
    expected = want(a)
    assert got[0].shape == expected.shape
    assert np.abs(got[0].astype(int) - expected).mean() < 8


def test_non_square_pixels_keep_their_aspect(model, tmp_path):
    """An anamorphic clip (128x128 stored, pixels twice as wide: shown 256x128) displays
    as the input does; before, the output's pixels were square (shown squashed)."""
    import av
    from fractions import Fraction

    src = tmp_path / "sar.mp4"
    with av.open(str(src), "w") as out:
        v = out.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 128, 128, "yuv420p"
        v.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.full((128, 128, 3), 60 * i, np.uint8),
                                           format="rgb24")
            f.pts = i
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
    for suffix in (".mp4", ".mkv"):
        dst = src.with_suffix(suffix)
        if suffix != ".mp4":
            import shutil
            shutil.copy(src, dst)  # an MP4 stream in a .mkv name: FFmpeg reads it the same
        r = run(dst, "--model", model, "-o", tmp_path / "out", *CPU)
        assert r.exit_code == 0, r.output
        with av.open(str(tmp_path / "out" / dst.name)) as c:
            s = c.streams.video[0]
            assert (s.codec_context.width, s.codec_context.height) == (128, 128)
            assert s.sample_aspect_ratio == Fraction(2, 1)


def test_animated_webp_frames_keep_their_durations(model, tmp_path):
    """Pillow's WebP plug-in reads a frame's duration when the frame loads, not on seek:
    every frame became 100 ms (half speed for a 50 ms animation)."""
    frames = [Image.fromarray(np.full((40, 48, 3), 30 * i, np.uint8)) for i in range(5)]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:],
                   duration=[50, 50, 100, 200, 50], loop=0, lossless=True)
    r = run(tmp_path / "anim.webp", "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 0, r.output
    got, times, _ = decode(tmp_path / "out" / "anim.mp4")
    assert len(got) == 5 and [float(t) for t in times] == [0, 0.05, 0.1, 0.2, 0.4]


@pytest.mark.parametrize("fmt", ["gif", "png"])
def test_an_animation_cut_between_two_frames_is_partial(model, tmp_path, fmt):
    """A GIF cut exactly after a frame decodes without an error; its missing trailer says
    it was cut: a partial video and exit 1, never the finished name (which a rerun would
    skip as done). An APNG so cut (Pillow notices that one itself) likewise."""
    ims = [Image.fromarray(np.full((40, 48, 3), 20 * i, np.uint8)) for i in range(8)]
    ims[0].save(tmp_path / f"whole.{fmt}", save_all=True, append_images=ims[1:], duration=80)
    data = (tmp_path / f"whole.{fmt}").read_bytes()
    if fmt == "gif":  # each frame starts with a graphic control extension (21 F9)
        cut = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\x21\xf9"][5]
    else:  # each frame after the first starts with an fcTL chunk (length, type)
        cut = [i - 4 for i in range(len(data) - 4) if data[i:i + 4] == b"fcTL"][5]
    (tmp_path / f"cut.{fmt}").write_bytes(data[:cut])
    r = run(tmp_path / f"cut.{fmt}", "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 1, r.output
    assert ("cut short after its last whole frame" if fmt == "gif"
            else "the file cannot be read past here") in r.output
    assert not (tmp_path / "out" / "cut.mp4").exists()
    kept, _, _ = decode(tmp_path / "out" / "cut.partial.mp4")
    assert 1 < len(kept) < 8
    r = run(tmp_path / f"whole.{fmt}", "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 0, r.output  # a whole animation has its end: no false alarm
    for name, extra in (("nl", b"\n"), ("junk", b"appended text\0\x21\x2c;"),
                        ("zeros", bytes(200))):  # bytes after the end: still whole
        (tmp_path / f"{name}.{fmt}").write_bytes(data + extra)
        r = run(tmp_path / f"{name}.{fmt}", "--model", model, "-o", tmp_path / "out", *CPU)
        assert r.exit_code == 0, (name, r.output)
        assert len(decode(tmp_path / "out" / f"{name}.mp4")[0]) == 8


def test_pairs_follow_split_and_model_size_keeps_the_models(model, tmp_path):
    """A 2:1 clip is A|B pairs: auto takes the model's input half (AtoB: left), as for
    images; --split none keeps the whole frame; --model-size writes the model's 64x64."""
    src = make_clip(tmp_path / "pair.mp4", frames=6, size=(256, 128), audio=False)
    r = run(src, "--model", model, "-o", tmp_path / "auto", *CPU)
    assert r.exit_code == 0 and "using the left half" in r.output, r.output
    assert decode(tmp_path / "auto" / "pair.mp4")[2]["size"] == (128, 128)
    assert run(src, "--model", model, "-o", tmp_path / "none", "--split", "none",
               *CPU).exit_code == 0
    assert decode(tmp_path / "none" / "pair.mp4")[2]["size"] == (256, 128)
    assert run(src, "--model", model, "-o", tmp_path / "ms", "--model-size",
               *CPU).exit_code == 0
    got, _, info = decode(tmp_path / "ms" / "pair.mp4")
    assert info["size"] == (64, 64) and len(got) == 6


def test_a_model_whose_outputs_are_not_8_bit_rgb_is_refused_before_decoding(clip, tmp_path):
    """A 16-bit or 4-band model has no video frames to write into: one line naming the file
    and why (never the internal 'use to_array' message)."""
    deep = identity_model(tmp_path / "deep.onnx", image_size=64, output_depth="uint16",
                          output_range=(0.0, 65535.0))
    r = run(clip, "--model", deep, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 1, r.output
    assert f"failed: {clip}: a video's frames are 8-bit RGB" in r.output
    assert "uint16" in r.output and "to_array" not in r.output
    assert not (tmp_path / "out" / "clip.mp4").exists()


def test_a_partial_never_takes_another_inputs_output(model, clip, tmp_path):
    """A damaged v.mp4 beside a whole v.partial.mp4 (whose output is v.partial.mp4): v's
    partial goes to v.mp4.partial.mp4, the other output is kept, and a later whole v.mp4
    removes only its own partial, also when v.partial.mp4 is not among the inputs."""
    src = tmp_path / "in"
    src.mkdir()
    data = clip.read_bytes()
    (src / "v.mp4").write_bytes(data[:int(len(data) * 0.6)])
    (src / "v.partial.mp4").write_bytes(data)
    out = tmp_path / "out"
    r = run(src, "--model", model, "-o", out, *CPU)
    assert r.exit_code == 1 and "translated 1, skipped 0, failed 1" in r.output, r.output
    own = out / "v.mp4.partial.mp4"
    assert f"kept in {own}" in r.output
    assert len(decode(out / "v.partial.mp4")[0]) == 24  # the whole input's output, intact
    assert 0 < len(decode(own)[0]) < 24
    r = run(src, "--model", model, "-o", out, *CPU)  # a rerun: the whole one is done
    assert r.exit_code == 1 and "skipped 1, failed 1" in r.output, r.output
    assert len(decode(out / "v.partial.mp4")[0]) == 24
    (src / "v.mp4").write_bytes(data)  # whole now, translated alone
    r = run(src / "v.mp4", "--model", model, "-o", out, *CPU)
    assert r.exit_code == 0, r.output
    assert not own.exists() and len(decode(out / "v.partial.mp4")[0]) == 24


def test_overwrite_with_frames_missing_removes_the_old_finished_video(model, clip, tmp_path):
    """--overwrite of a video whose input is now damaged: the old finished output is no
    translation of this input any more, so it goes (a later run must not skip it as done)."""
    data = clip.read_bytes()
    src = tmp_path / "t.mp4"
    src.write_bytes(data)
    out = tmp_path / "out"
    assert run(src, "--model", model, "-o", out, *CPU).exit_code == 0
    src.write_bytes(data[:int(len(data) * 0.6)])
    r = run(src, "--model", model, "-o", out, "--overwrite", *CPU)
    assert r.exit_code == 1, r.output
    assert (out / "t.partial.mp4").exists() and not (out / "t.mp4").exists()
    r = run(src, "--model", model, "-o", out, *CPU)
    assert r.exit_code == 1 and "skipped 0" in r.output, r.output


def test_a_matroska_file_cut_short_fails_and_keeps_its_frames(model, tmp_path):
    """A Matroska file cut short keeps its declared duration (and the video track's own
    DURATION tag): with no audio track to explain the gap, the missing frames fail the
    input (exit 1) and the frames that were read are kept as a partial video."""
    import av

    whole = make_clip(tmp_path / "whole.mkv", frames=48, size=64, audio=False,
                      codec="ffv1")
    with av.open(str(whole)) as c:
        declared = c.duration / 1e6
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:int(len(data) * 0.5)])
    with av.open(str(cut)) as c:
        assert c.duration and abs(c.duration / 1e6 - declared) < 1e-3  # still declared
    r = run(cut, "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 1, r.output
    assert f"s of the {declared:.3f} s the video stream declares (no audio track): the " \
        "rest are missing" in r.output, r.output
    assert "longer audio track" not in r.output
    kept, _, _ = decode(tmp_path / "out" / "cut.partial.mkv")
    assert 0 < len(kept) < 48 and not (tmp_path / "out" / "cut.mkv").exists()
    # The whole file still passes: the check can tell the two apart.
    r = run(whole, "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 0 and "48 frames" in r.output, r.output


def test_a_longer_audio_track_is_a_note_not_missing_frames(model, tmp_path):
    """A container whose duration is its longer audio track's: every frame is there (the
    video stream's own duration says so), so exit 0, with a note."""
    src = make_clip(tmp_path / "long_sound.mkv", frames=24, size=64, audio_seconds=3)
    r = run(src, "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 0, r.output
    assert "the container declares (a longer audio track" in r.output, r.output
    assert len(decode(tmp_path / "out" / "long_sound.mkv")[0]) == 24


def test_a_cut_animation_fails_with_its_frames_kept_and_apng_is_an_animation(model,
                                                                            tmp_path):
    """A GIF cut short (Pillow: is_animated, but n_frames raises) is not a still of its
    first frame: its frames up to the cut are kept as a partial video, exit 1. An animated
    PNG is an animation like GIF/WebP: every frame, at its own duration."""
    ims = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), np.uint8))
           for i in range(12)]
    ims[0].save(tmp_path / "whole.gif", save_all=True, append_images=ims[1:], duration=80)
    data = (tmp_path / "whole.gif").read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[:len(data) // 2])
    r = run(tmp_path / "cut.gif", "--model", model, "-o", tmp_path / "out", *CPU)
    assert r.exit_code == 1, r.output
    assert "the file cannot be read past here" in r.output, r.output
    assert not (tmp_path / "out" / "cut.png").exists()
    kept, _, _ = decode(tmp_path / "out" / "cut.partial.mp4")
    assert 1 < len(kept) < 12
    ims[0].save(tmp_path / "anim.png", save_all=True, append_images=ims[1:6],
                duration=[100, 50, 100, 200, 100, 100])
    r = run(tmp_path / "anim.png", "--model", model, "-o", tmp_path / "apng", *CPU)
    assert r.exit_code == 0, r.output
    got, times, _ = decode(tmp_path / "apng" / "anim.mp4")
    assert len(got) == 6 and [float(t) for t in times] == [0, 0.1, 0.15, 0.25, 0.45, 0.55]
    assert not (tmp_path / "apng" / "anim.png").exists()


def test_tile_says_video_frames_are_not_tiled(model, tmp_path):
    src = make_clip(tmp_path / "v.mp4", frames=3, size=64, audio=False)
    r = run(src, "--model", model, "-o", tmp_path / "out", "--tile", *CPU)
    assert r.exit_code == 0, r.output
    assert "note: --tile tiles images only; the frames of 1 video(s) are not tiled" in r.output
    assert "tiles/s" not in r.output and "tiles: " not in r.output
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(tmp_path / "img.png")
    r = run(src, tmp_path / "img.png", "--model", model, "-o", tmp_path / "mix", "--tile", *CPU)
    assert r.exit_code == 0, r.output
    # 96x64 in 64 px tiles of the default 16 px overlap: 2 tiles, the 3 frames not counted
    assert "tiles: 64x64" in r.output
    rate = [ln for ln in r.output.splitlines() if ln.startswith("translated 2")][0]
    assert " images/s, " in rate and " tiles/s " in rate


def test_encoders_that_need_other_pixel_formats_work_or_are_refused_up_front(model, tmp_path):
    one = make_clip(tmp_path / "one.mp4", frames=1, size=(66, 50), audio=False)
    r = run(one, "--model", model, "-o", tmp_path / "mj", "--video-codec", "mjpeg", *CPU)
    assert r.exit_code == 0, r.output
    assert "one.mp4: 1 frame, mjpeg" in r.output  # full-range YUV, as JPEG needs
    got, _, info = decode(tmp_path / "mj" / "one.mp4")
    assert len(got) == 1 and info["codec"] == "mjpeg" and info["pix_fmt"] == "yuvj420p"
    # gif takes palettes only: one line before the model loads, nothing written
    r = run(one, "--model", model, "-o", tmp_path / "gif", "--video-codec", "gif", *CPU)
    assert r.exit_code == 1 and "Error: --video-codec gif: cannot encode" in r.output
    assert "model " not in r.output and not (tmp_path / "gif").exists()


def test_x265_is_quiet(model, tmp_path):
    import av

    if "libx265" not in av.codecs_available:
        pytest.skip("this FFmpeg has no libx265")
    src = make_clip(tmp_path / "v.mp4", frames=4, size=64, audio=False)
    exe = Path(sys.executable).with_name("p2p-translate")
    p = subprocess.run([str(exe), str(src), "--model", str(model), "-o", str(tmp_path / "o"),
                        "--video-codec", "libx265", *CPU], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "x265 [" not in p.stderr, p.stderr
    assert len(decode(tmp_path / "o" / "v.mp4")[0]) == 4


def animation(path: Path, frames: int = 4, size=(48, 40)) -> Path:
    ims = [Image.fromarray(np.full((size[1], size[0], 3), 40 * i + 10, np.uint8))
           for i in range(frames)]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=100, loop=0)
    return path


def test_one_naming_rule_for_images_animations_and_videos(model, clip, tmp_path):
    """Outputs are <stem><ext>; inputs of one folder that would share a name each keep their
    own extension in it, videos and animations as images (x.jpg.png): anim.gif.mp4 and
    anim.webp.mp4, clip.mp4.mp4 and clip.gif.mp4. Each is the right file, and a rerun finds
    them all (skipped)."""
    src = tmp_path / "in"
    src.mkdir()
    animation(src / "anim.gif", 3)
    animation(src / "anim.webp", 5)
    (src / "clip.mp4").write_bytes(clip.read_bytes())
    animation(src / "clip.gif", 2)
    animation(src / "solo.webp", 4)
    out = tmp_path / "out"
    r = run(src, "--model", model, "-o", out, *CPU)
    assert r.exit_code == 0, r.output
    assert "translated 5, skipped 0, failed 0" in r.output
    got = {p.name: len(decode(p)[0]) for p in out.iterdir()}
    assert got == {"anim.gif.mp4": 3, "anim.webp.mp4": 5, "clip.mp4.mp4": 24,
                   "clip.gif.mp4": 2, "solo.mp4": 4}
    r = run(src, "--model", model, "-o", out, *CPU)
    assert r.exit_code == 0 and "translated 0, skipped 5, failed 0" in r.output, r.output


def test_a_video_and_an_animation_of_one_name_from_two_folders_refuse_the_run(model, clip,
                                                                             tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "clip.mp4").write_bytes(clip.read_bytes())
    animation(tmp_path / "b" / "clip.gif")
    animation(tmp_path / "b" / "clip.webp")
    out = tmp_path / "out"
    # Names come from each file's own folder: b/clip.gif shares its name with b/clip.webp
    # (both animations: clip.mp4) and keeps its extension; a/clip.mp4 is alone in a/.
    r = run(tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.gif", "--model", model,
            "-o", out, *CPU)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["clip.gif.mp4", "clip.mp4"]
    # The same name twice (a/clip.mp4 and c/clip.mp4): refused up front, nothing written.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "clip.mp4").write_bytes(clip.read_bytes())
    r = run(tmp_path / "a" / "clip.mp4", tmp_path / "c" / "clip.mp4", "--model", model,
            "-o", tmp_path / "o2", *CPU)
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {tmp_path / 'a' / 'clip.mp4'} and "
                               f"{tmp_path / 'c' / 'clip.mp4'} would both be written to "
                               f"{tmp_path / 'o2' / 'clip.mp4'}; nothing was run")
    assert len(r.output.splitlines()) == 1 and not (tmp_path / "o2").exists()


def test_a_killed_video_run_s_temp_is_removed_even_when_its_pid_lives_again(model, clip,
                                                                          tmp_path):
    """What a killed video run leaves: a hidden temp named by the target, the writer's pid
    and keep_suffix's extension. Pids are reused (in a container every run may be pid 1),
    so the pid can be alive again: another process started after the temp was written, or
    the next run itself. Those temps are removed; a live writer's is kept. A killed
    --overwrite run's temp goes too, though the rerun skips its (older) output."""
    out = tmp_path / "out"
    out.mkdir()
    later = subprocess.Popen(["sleep", "60"])  # a process that got a dead writer's pid
    writer = subprocess.Popen(["sleep", "60"])  # a live writer, still at work
    try:
        time.sleep(0.1)
        long_ago = time.time() - 3600

        def temp(pid: int, target: str = "clip.mp4", age=long_ago) -> Path:
            p = out / f".{target}.{pid}.k1lled_x{TMP_SUFFIX}.mp4"
            p.write_bytes(b"\x00\x00\x00\x18ftypmp42 half a video")
            if age is not None:
                os.utime(p, (age, age))
            return p

        gone = [temp(os.getpid()), temp(later.pid), temp(dead_pid())]
        kept = temp(writer.pid, age=None)  # written after its writer started
        r = run(clip, "--model", model, "-o", out, *CPU)
        assert r.exit_code == 0, r.output
        assert not any(p.exists() for p in gone) and kept.exists()
        assert len(decode(out / "clip.mp4")[0]) == 24
        # --overwrite killed: the old output stays, its temp is left; the rerun skips the
        # output and still removes the temp.
        stale = temp(os.getpid())
        r = run(clip, "--model", model, "-o", out, *CPU)
        assert r.exit_code == 0 and "skipped 1" in r.output, r.output
        assert not stale.exists() and kept.exists()
    finally:
        for p in (later, writer):
            p.kill()
            p.wait()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


class FakeBar:
    """tqdm's interface as p2p-translate uses it, recording every count."""

    made: list["FakeBar"] = []

    def __init__(self, total=None, **kw):
        self.total, self.n, self.updates, self.closed = total, 0, [], False
        self.asked = total  # the total it was made with (a wrong one could be reset after)
        self.lock = threading.Lock()
        FakeBar.made.append(self)

    def update(self, n=1):
        with self.lock:
            self.n += n
            self.updates.append(n)

    def refresh(self):
        pass

    def close(self):
        self.closed = True


@pytest.mark.parametrize("images", [0, 3])
def test_the_progress_bar_ends_exactly_at_its_total(model, clip, tmp_path, monkeypatch,
                                                    images):
    """One count a frame and one an image: a 24-frame clip (and an animation of 5) with
    ``images`` images counts 29 + images of 29 + images, never one more per video."""
    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    FakeBar.made = []
    src = tmp_path / "in"
    src.mkdir()
    (src / "clip.mp4").write_bytes(clip.read_bytes())
    animation(src / "anim.gif", 5)
    for i in range(images):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(src / f"{i}.png")
    r = run(src, "--model", model, "-o", tmp_path / "out", "--provider", "cpu",
            "--precision", "fp32")
    assert r.exit_code == 0, r.output
    (bar,) = FakeBar.made
    assert bar.asked == bar.total == bar.n == sum(bar.updates) == 24 + 5 + images
    assert bar.closed


def test_bad_frames_are_listed_in_presentation_order(tmp_path):
    """A decoder reports bad frames in decode order (B-frames: 8, 7, 9); the failure list
    reads in presentation order, what ended the file last."""
    from array import array

    from p2p.runtime.video import VideoReader

    reader = VideoReader(make_clip(tmp_path / "c.mp4", frames=4, size=64, audio=False))
    reader.decoded = array("q", [0, 1, 2])
    reader.failed = [(None, "the file cannot be read past here: x"), (8, "b"), (7, "a"),
                     (9, "c")]
    lines = [line for line in reader.problems() if "frame" in line]
    assert [line.split(": ", 1)[1][:7] for line in lines[:4]] == [
        "frame 3", "frame 4", "frame 5", "after f"]

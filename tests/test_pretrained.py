"""p2p-pretrained against a local HTTP server (P2P_MODELS_URL): get, cache, hashes, resume.

The served file is a reference-format ``*_net_G.pth`` made here with the test-local copy of
junyanz's network (ngf 8, U-Net-64), so nothing needs the real host.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2p.cli.pretrained import main as pretrained_cli
from p2p.cli.translate import main as translate_cli
from p2p.export.pretrained import PRECISIONS
from p2p.runtime import download, pretrained
from p2p.runtime.modelfile import read_metadata
from p2p.runtime.errors import ModelError
from p2p.runtime.locate import pick_model
from reference_nets import JunyanzUnetGenerator, junyanz_norm
from test_export import liven

NAME = "facades_label2photo"
BIN = Path(sys.executable).parent


def reference_bytes(tmp: Path, seed: int) -> bytes:
    net = liven(JunyanzUnetGenerator(3, 3, 6, 8, junyanz_norm("batch"), use_dropout=True), seed)
    path = tmp / f"g{seed}.pth"
    torch.save(net.state_dict(), path)  # what their save_networks writes
    return path.read_bytes()


class Server:
    """Serves ``files`` (name -> bytes) with HTTP Range support; records each request's
    Range header; ``cut_after`` makes the next response close the connection mid-body;
    ``delay`` slows every 4 KB block (for a kill mid-download); ``ignore_start`` answers a
    range request with the wrong bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None
        self.delay = 0.0
        self.ignore_start: int | None = None  # answer any range from this byte instead
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                start = server.ignore_start if rng and server.ignore_start is not None else start
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                rest = body[start:]
                if server.cut_after is not None:  # promise all, send some, hang up
                    rest, server.cut_after = rest[:server.cut_after], None
                    self.close_connection = True
                for i in range(0, len(rest), 4096):
                    self.wfile.write(rest[i:i + 4096])
                    time.sleep(server.delay)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    return reference_bytes(tmp, 1), reference_bytes(tmp, 2)


@pytest.fixture
def server(tmp_path, monkeypatch, weights):
    s = Server()
    s.files[f"{NAME}.pth"] = weights[0]
    monkeypatch.setenv("P2P_MODELS_URL", s.url)
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    yield s
    s.close()


def cli(*args):
    return CliRunner().invoke(pretrained_cli, [str(a) for a in args])


def facades_like(folder: Path, n: int = 3) -> Path:
    """A|B images like the facades val folder (photo left, labels right), 128 x 64."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(
            folder / f"{i}.jpg")
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(tmp_path: Path) -> list[str]:
    d = tmp_path / "cache" / "models" / NAME
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.mark.slow
def test_get_downloads_exports_and_is_then_used_by_name(server, weights, tmp_path):
    r = cli("get", NAME, "--fp16", "--quiet")
    assert r.exit_code == 0, r.output
    onnx = tmp_path / "cache" / "models" / NAME / "generator.onnx"
    assert r.output.splitlines()[-2:] == [str(onnx), str(onnx.with_name("generator.fp16.onnx"))]
    assert server.requests == [(f"/{NAME}.pth", None)]
    assert "onnx.checker (full) ok" in r.output  # the exporter's own checks ran
    for path, dtype in ((onnx, "float32"), (onnx.with_name("generator.fp16.onnx"), "float16")):
        meta = read_metadata(path)
        assert (meta.source, meta.direction, meta.image_size, meta.input_dtype) == \
            ("junyanz", "BtoA", 64, dtype)
        assert meta.source_url == f"{server.url}/{NAME}.pth"
        assert meta.checkpoint_sha256 == sha(weights[0])
    book = json.loads((tmp_path / "cache" / "models" / "sha256.json").read_text())
    assert book[NAME] == {"sha256": sha(weights[0]), "url": f"{server.url}/{NAME}.pth"}
    assert leftovers(tmp_path) == [f"{NAME}_net_G.pth", "generator.fp16.onnx", "generator.onnx"]

    # Used by name: p2p-translate picks the cached FP32 model, the right (label) half in.
    src = facades_like(tmp_path / "val")
    t = CliRunner().invoke(translate_cli, [str(src), "--model", NAME, "-o",
                                           str(tmp_path / "out"), "--quiet"])
    assert t.exit_code == 0, t.output
    assert f"model {onnx}" in t.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "2.png"]
    assert Image.open(tmp_path / "out" / "0.png").size == (64, 64)  # the half's size
    assert pick_model(NAME)[0] == onnx  # p2p-serve's --model goes through the same function

    # A second get: the cache, checked by its hash, and no request at all.
    r = cli("get", NAME, "--fp16", "--quiet")
    assert r.exit_code == 0 and "already in the cache" in r.output
    assert len(server.requests) == 1
    assert "downloaded" in cli("list").output


@pytest.mark.slow
def test_get_int8_calibrates_on_the_given_images(server, weights, tmp_path):
    r = cli("get", NAME, "--int8", "--quiet")  # a download has no run to calibrate on
    assert r.exit_code == 1 and "records no training data to calibrate on; pass " \
        "--calibration DIR" in r.output, r.output
    # issue 22: the verified FP32 file is still written; only the INT8 one is missing
    assert "(wrote generator.onnx)" in r.output and read_metadata(
        tmp_path / "cache" / "models" / NAME / "generator.onnx").verified
    from test_int8 import _save  # smooth images like the exporter's check images
    from test_export import images

    r = cli("get", NAME, "--int8", "--calibration", _save(tmp_path / "cal", images(8, seed=3)),
            "--quiet")
    assert r.exit_code == 0, r.output
    int8 = tmp_path / "cache" / "models" / NAME / "generator.int8.onnx"
    assert r.output.splitlines()[-1] == str(int8)
    meta = read_metadata(int8)
    assert (meta.model_precision, meta.calibration_images, meta.verified) == ("int8", 8, True)
    assert meta.checkpoint_sha256 == sha(weights[0])
    # By name: the fastest verified export of the model's folder, and the rule said.
    path, why = pick_model(NAME)
    assert path in (int8, int8.with_name("generator.onnx")) and NAME in why


@pytest.mark.slow
def test_a_changed_file_is_refused_by_its_hash(server, weights, tmp_path):
    assert cli("get", NAME, "--quiet").exit_code == 0
    pth = tmp_path / "cache" / "models" / NAME / f"{NAME}_net_G.pth"
    server.files[f"{NAME}.pth"] = weights[1]  # the server now sends other bytes
    r = cli("get", NAME, "--force", "--quiet")
    assert r.exit_code == 1
    assert f"sha256 {sha(weights[1])} does not match the expected {sha(weights[0])}" \
        in r.output
    assert pth.read_bytes() == weights[0]  # the checked file is untouched, no .part left
    assert leftovers(tmp_path) == [f"{NAME}_net_G.pth", "generator.onnx"]
    # A cached file changed on disk is refused too, before any export.
    pth.write_bytes(weights[1])
    r = cli("get", NAME, "--quiet")
    assert r.exit_code == 1 and "the cached" in r.output and "does not match" in r.output
    # --sha256 pins by hand (here: the new file).
    r = cli("get", NAME, "--force", "--quiet", "--sha256", sha(weights[1]))
    assert r.exit_code == 0, r.output
    assert read_metadata(pth.with_name("generator.onnx")).checkpoint_sha256 == sha(weights[1])


@pytest.mark.slow
def test_an_interrupted_download_leaves_nothing_in_place_and_resumes(server, weights,
                                                                      tmp_path):
    server.cut_after = 5000  # the server hangs up 5000 bytes into the body
    r = cli("get", NAME, "--quiet")
    assert r.exit_code == 1 and "connection closed after 5000 bytes" in r.output
    assert leftovers(tmp_path) == [f".{NAME}_net_G.pth.part"]  # nothing half-written in place
    r = cli("get", NAME, "--quiet")
    assert r.exit_code == 0, r.output
    assert server.requests[-1] == (f"/{NAME}.pth", "bytes=5000-")  # resumed, not restarted
    pth = tmp_path / "cache" / "models" / NAME / f"{NAME}_net_G.pth"
    assert pth.read_bytes() == weights[0]
    assert leftovers(tmp_path) == [f"{NAME}_net_G.pth", "generator.onnx"]


@pytest.mark.slow
def test_a_killed_process_resumes(server, weights, tmp_path):
    server.delay = 0.02  # ~200 KB/s: the kill lands mid-body
    env = {**os.environ, "P2P_MODELS_URL": server.url, "P2P_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([str(BIN / "p2p-pretrained"), "get", NAME, "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / "cache" / "models" / NAME / f".{NAME}_net_G.pth.part"
    deadline = time.monotonic() + 120
    while not (part.exists() and part.stat().st_size > 20000):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert leftovers(tmp_path) == [part.name]
    have = part.stat().st_size
    server.delay = 0.0
    r = cli("get", NAME, "--quiet")
    assert r.exit_code == 0, r.output
    assert server.requests[-1] == (f"/{NAME}.pth", f"bytes={have}-")
    assert (part.parent / f"{NAME}_net_G.pth").read_bytes() == weights[0]


def test_a_resume_answered_with_other_bytes_is_not_appended(server, weights, tmp_path):
    dest = tmp_path / "x" / "g.pth"
    url = f"{server.url}/{NAME}.pth"
    download.part_path(dest).parent.mkdir()
    download.part_path(dest).write_bytes(weights[0][:3000])
    server.ignore_start = 0  # a 206 that starts at byte 0, not 3000
    with pytest.raises(download.DownloadError, match="answered the resume with other bytes"):
        download.fetch(url, dest, progress=False)
    assert not dest.exists() and not download.part_path(dest).exists()
    server.ignore_start = None
    assert download.fetch(url, dest, progress=False) == sha(weights[0])
    assert dest.read_bytes() == weights[0] and server.requests[-1] == (f"/{NAME}.pth", None)


def test_no_network_says_what_was_tried_and_how_to_import(tmp_path, monkeypatch,
                                                          closed_port):
    port = closed_port
    monkeypatch.setenv("P2P_MODELS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    r = cli("get", NAME)
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: http://127.0.0.1:{port}/{NAME}.pth: download failed:")
    assert r.output.rstrip().endswith(f"p2p-pretrained import FILE.pth --name {NAME}")
    assert r.output.count("\n") == 1
    assert not (tmp_path / "cache" / "models" / NAME).exists()
    r = cli("get", "facades")  # a dataset's name, not a model's
    assert r.exit_code == 1 and "facades: not a published model; known: " \
        "facades_label2photo|sat2map|map2sat|edges2shoes|day2night" in r.output


@pytest.mark.slow
def test_import_by_hand_and_names_outside_the_catalogue(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("P2P_MODELS_URL", "http://127.0.0.1:9")  # never contacted
    f = tmp_path / "latest_net_G.pth"
    f.write_bytes(weights[1])
    r = cli("import", f, "--name", "mine", "--quiet")
    assert r.exit_code == 1 and "give its --direction" in r.output
    r = cli("import", f, "--name", "mine", "--direction", "AtoB", "--quiet")
    assert r.exit_code == 0, r.output
    meta = read_metadata(pick_model("mine")[0])
    assert (meta.direction, meta.checkpoint_sha256) == ("AtoB", sha(weights[1]))
    assert meta.source_url == f"file://{f.resolve()}"
    with pytest.raises(ModelError, match=r"nope: no such model file.*downloaded in .*: mine;"):
        pick_model("nope")
    with pytest.raises(ModelError, match=f"run p2p-pretrained get {NAME}"):
        pick_model(NAME)
    assert "imported: mine" in cli("list").output


def test_precisions_are_the_exporters_and_lookup_needs_no_torch(tmp_path):
    assert set(PRECISIONS) == {"fp16", "int8"}  # a new exporter precision is one line there
    assert "--calibration" in cli("get", "--help").output
    assert "--fp16" in cli("get", "--help").output
    assert set(pretrained.CATALOGUE) == {"facades_label2photo", "sat2map", "map2sat",
                                         "edges2shoes", "day2night"}
    script = textwrap.dedent(f"""
        import os, sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        os.environ["P2P_CACHE"] = {str(tmp_path)!r}
        from p2p.runtime.pretrained import resolve_model  # what pick_model asks for a name
        from p2p.runtime.errors import ModelError
        d = {str(tmp_path / "models" / "x")!r}
        os.makedirs(d)
        open(os.path.join(d, "generator.onnx"), "wb").close()
        print(resolve_model("x"))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "models" / "x" / "generator.onnx")


@pytest.mark.slow
def test_an_import_never_pins_the_published_hash_and_a_failed_one_keeps_the_cache(
        server, weights, tmp_path):
    # Another generator (a fine-tune, another mirror) imported under the published name.
    own = tmp_path / "own_net_G.pth"
    own.write_bytes(weights[1])
    r = cli("import", own, "--name", NAME, "--quiet")
    assert r.exit_code == 0, r.output
    book = tmp_path / "cache" / "models" / "sha256.json"
    assert NAME not in (json.loads(book.read_text()) if book.exists() else {})
    meta = read_metadata(pick_model(NAME)[0])
    assert meta.source_url == f"file://{own.resolve()}"  # not claimed as the published file
    # The real download is then the published file, not "corrupt", and it is recorded.
    r = cli("get", NAME, "--force", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(book.read_text())[NAME]["sha256"] == sha(weights[0])
    cached = pretrained.weights_path(NAME)
    assert cached.read_bytes() == weights[0]
    onnx_before = pretrained.onnx_path(NAME).read_bytes()
    # A re-import of a file that does not export fails and leaves the good cache alone.
    bad = tmp_path / "bad_net_G.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    r = cli("import", bad, "--name", NAME, "--sha256", sha(bad.read_bytes()), "--quiet")
    assert r.exit_code == 1 and "not a pix2pix generator" in r.output, r.output
    assert cached.read_bytes() == weights[0]
    assert pretrained.onnx_path(NAME).read_bytes() == onnx_before

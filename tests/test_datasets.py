"""Named datasets: download from a local HTTP server, checks, atomic extraction, errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2p.cli.train import main as train_cli
from p2p.runtime.errors import DataError
from p2p.trainer import datasets


def _png(size=(64, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def make_archive(path: Path, members: dict[str, bytes],
                 links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


GOOD = {f"facades/{split}/{i}.png": _png() for split in ("train", "val") for i in (1, 2)}


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local http.server over tmp_path/www; counts GET requests; sets P2P_DATA/_URL."""
    www = tmp_path / "www"
    www.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("P2P_DATASET_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("P2P_DATA", str(tmp_path / "cache"))
    yield www, hits
    httpd.shutdown()
    httpd.server_close()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_checks_and_extracts_once(server, tmp_path):
    www, hits = server
    make_archive(www / "facades.tar.gz", GOOD)
    path = datasets.resolve("facades")
    assert path == tmp_path / "cache" / "facades"
    assert sorted(p.name for p in (path / "train").iterdir()) == ["1.png", "2.png"]
    assert (path / "val" / "2.png").read_bytes() == GOOD["facades/val/2.png"]
    # no archive, .part or temp dir left; the archive's digest is recorded for next time
    assert _leftovers(tmp_path / "cache") == ["facades", "sha256.json"]
    assert datasets.resolve("facades") == path and hits == ["/facades.tar.gz"]  # cached


def test_sha256_is_checked_when_known(server, tmp_path):
    www, _ = server
    archive = make_archive(www / "facades.tar.gz", GOOD)
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="does not match the expected"):
        datasets.ensure("facades", sha256="0" * 64)
    assert _leftovers(tmp_path / "cache") == []
    assert datasets.ensure("facades", sha256=good).is_dir()


@pytest.mark.parametrize("case,message", [
    ("traversal", "unsafe or unexpected member '../evil.png'"),
    ("absolute", "unsafe or unexpected member '/tmp/evil.png'"),
    ("outside", "unsafe or unexpected member 'other/train/1.png'"),
    ("symlink", "is a link or device"),
    ("no-train", "lacks the expected folder facades/train/"),
    ("not-gzip", "not a valid .tar.gz archive"),
    ("missing", "HTTP 404"),
])
def test_bad_archives_are_refused_and_leave_nothing(server, tmp_path, case, message):
    www, _ = server
    target = www / "facades.tar.gz"
    if case == "traversal":
        make_archive(target, {**GOOD, "../evil.png": b"x"})
    elif case == "absolute":
        make_archive(target, {"/tmp/evil.png": b"x", **GOOD})
    elif case == "outside":
        make_archive(target, {**GOOD, "other/train/1.png": b"x"})
    elif case == "symlink":
        make_archive(target, GOOD, links={"facades/train/3.png": "/etc/passwd"})
    elif case == "no-train":
        make_archive(target, {"facades/val/1.png": _png()})
    elif case == "not-gzip":
        target.write_bytes(b"<html>this is not an archive</html>")
    with pytest.raises(DataError) as e:
        datasets.resolve("facades")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "facades.tar.gz" in str(e.value)
    assert _leftovers(tmp_path / "cache") == []
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_unknown_name_lists_the_allowed_ones(server):
    with pytest.raises(DataError, match="edges2shoes.*night2day"):
        datasets.resolve("facdes")
    with pytest.raises(DataError, match="no such data folder"):
        datasets.resolve("some/missing/folder")


@pytest.fixture
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_p2p_train_data_name_downloads_then_trains(server, tmp_path, _restore_threads):
    www, hits = server
    make_archive(www / "facades.tar.gz", GOOD)
    out = tmp_path / "run"
    args = ["--data", "facades", "--direction", "BtoA", "--image-size", "32", "--load-size",
            "32", "--ngf", "4", "--ndf", "4", "--max-steps", "2", "--workers", "0",
            "--quiet", "--threads", "1", "-o", str(out)]
    r = CliRunner().invoke(train_cli, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cache" / "facades" / "train" / "1.png").is_file()
    assert (out / "checkpoints" / "latest.pt").is_file() and hits == ["/facades.tar.gz"]
    r = CliRunner().invoke(train_cli, ["--data", "nosuchset", "-o", str(tmp_path / "x")])
    assert r.exit_code == 1 and "allowed names: facades|cityscapes" in r.output


def test_first_digest_is_recorded_and_a_changed_archive_refused(server, tmp_path):
    www, hits = server
    archive = make_archive(www / "facades.tar.gz", GOOD)
    path = datasets.resolve("facades")
    book = datasets.download.HashBook(tmp_path / "cache" / "sha256.json")
    assert book.get("facades") == hashlib.sha256(archive.read_bytes()).hexdigest()
    # The server now sends another archive: once the local copy is gone it is refused.
    make_archive(www / "facades.tar.gz", {**GOOD, "facades/train/3.png": _png()})
    shutil.rmtree(path)
    with pytest.raises(DataError, match="does not match the expected"):
        datasets.resolve("facades")
    assert _leftovers(tmp_path / "cache") == ["sha256.json"]


def test_unreachable_server_says_where_it_looked_and_how_to_use_a_copy(tmp_path, monkeypatch,
                                                                       closed_port):
    port = closed_port
    monkeypatch.setenv("P2P_DATASET_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("P2P_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError) as e:
        datasets.resolve("facades")
    msg = str(e.value)
    assert "\n" not in msg and f"127.0.0.1:{port}/facades.tar.gz" in msg
    assert str(tmp_path / "data") in msg and "--data /path/to/facades" in msg
    assert _leftovers(tmp_path / "data") == []

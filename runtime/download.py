"""Resumable, atomic, hash-checked downloads: the one downloader for models and datasets.

    digest = fetch(url, dest, expected_sha256=None)

The bytes go to ``.<dest name>.part`` beside ``dest``. A download that dies (network drop,
server closing mid-body, kill -9) leaves only that ``.part`` file; the next ``fetch`` asks the
server for the rest with an HTTP ``Range`` request (RFC 9110 section 14) and appends, or starts
again when the server ignores ranges (status 200 instead of 206). Only a complete file whose
SHA-256 matches the expected one is renamed onto ``dest`` (``os.replace``: atomic on one file
system), so ``dest`` is either absent or whole and checked. A second process downloading the
same file waits for nothing: it is refused at once (an exclusive ``flock`` on the ``.part``).

Trust on first use: ``HashBook`` is a small JSON file of the SHA-256 first seen for each
name; later downloads of that name must match it. Torch-free (trainer/ and export/ use it).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .host import file_sha256
from .errors import DownloadError, HashMismatch
from .files import atomic_write

SHA256_RE = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20

try:  # POSIX; elsewhere two concurrent downloads of one file are simply not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def check_sha256(value: str, where: str) -> str:
    """A lower-case 64-hex-digit digest, or ``DownloadError`` naming ``where``."""
    value = value.strip().lower()
    if not SHA256_RE.fullmatch(value):
        raise DownloadError(f"{where}: {value!r} is not a SHA-256 (64 hex digits)")
    return value


def part_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def fetch(url: str, dest: Path, expected_sha256: str | None = None, progress: bool = True,
          timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` (resuming a ``.part`` left by an earlier try).

    Returns the SHA-256 (hex) of the complete file. Raises ``DownloadError`` when the server
    cannot be reached or answers with an error (the ``.part`` is kept for a resume), and
    ``HashMismatch`` when the complete file is not the expected one (the ``.part`` is
    deleted: those bytes are wrong, resuming them cannot help). ``dest`` is written only on
    success, atomically.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = open(part_path(dest), "ab")
    except OSError as e:
        raise DownloadError(f"{dest}: cannot write: {e.strerror or e}") from None
    with part:
        if fcntl is not None:
            try:
                fcntl.flock(part, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DownloadError(f"{dest}: another process is downloading it right now; "
                                    "wait for it to finish") from None
        try:
            _transfer(url, part, progress, timeout)
        except DownloadError:
            if part.tell() == 0:  # nothing to resume: leave no empty .part behind
                Path(part.name).unlink(missing_ok=True)
            raise
        part.flush()
        os.fsync(part.fileno())
        digest = file_sha256(Path(part.name))
        if expected_sha256 and digest != expected_sha256:
            Path(part.name).unlink(missing_ok=True)
            raise HashMismatch(f"{url}: sha256 {digest} does not match the expected "
                               f"{expected_sha256}; the file is corrupt or not the one "
                               "published (nothing was kept)")
        os.replace(part.name, dest)
    return digest


def _transfer(url: str, part, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to the open ``part`` file (from byte ``part.tell()``)."""
    have = part.seek(0, os.SEEK_END)
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if have and r.status != 206:  # the server ignored the range: start again
                part.seek(0)
                part.truncate()
                have = 0
            elif have and _range_start(r.headers.get("Content-Range")) != have:
                part.seek(0)
                part.truncate()
                raise DownloadError(f"{url}: the server answered the resume with other "
                                    f"bytes ({r.headers.get('Content-Range')}); rerun to "
                                    "download it whole")
            total = int(r.headers.get("Content-Length") or 0)
            with tqdm(total=(have + total) or None, initial=have, unit="B", unit_scale=True,
                      desc=url.rsplit("/", 1)[-1], disable=not progress) as bar:
                got = 0
                while block := r.read(CHUNK):
                    part.write(block)
                    got += len(block)
                    bar.update(len(block))
            # read(n) returns b"" when the server hangs up early; only the length tells.
            if total and got < total:
                raise http.client.IncompleteRead(b"", total - got)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is already whole
            return
        raise DownloadError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        if isinstance(e, http.client.IncompleteRead):
            reason = f"connection closed after {part.tell()} bytes (rerun to resume)"
        raise DownloadError(f"{url}: download failed: {reason}") from None


def _range_start(content_range: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/SIZE`` (RFC 9110 14.4)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", content_range or "")
    return int(m.group(1)) if m else None


class HashBook:
    """The SHA-256 first seen for each name, in one JSON file (trust on first use).

    ``{"facades_label2photo": {"sha256": "...", "url": "..."}}``; written atomically.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict:
        try:
            book = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as e:
            raise DownloadError(f"{self.path}: unreadable hash record ({e}); fix or delete "
                                "it") from None
        return book if isinstance(book, dict) else {}

    def get(self, name: str) -> str | None:
        entry = self.read().get(name)
        return entry.get("sha256") if isinstance(entry, dict) else None

    def record(self, name: str, sha256: str, url: str) -> None:
        book = self.read()
        book[name] = {"sha256": sha256, "url": url}
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(book, indent=2) + "\n"))


def expected(name: str, pinned: str | None, by_hand: str | None, book: HashBook) -> str | None:
    """The digest a download of ``name`` must have: the user's ``--sha256`` first, then the one
    pinned in code, then the one recorded on first download; None when nothing is known."""
    if by_hand:
        return check_sha256(by_hand, "--sha256")
    return pinned or book.get(name)

"""The classic pix2pix datasets by name: a local cache, download, checks, atomic extraction.

``--data facades`` looks in ``$P2P_DATA`` (default ``~/.cache/p2p/datasets``) for
``facades/``; when it is absent it downloads the archive pix2pix's own
``datasets/download_pix2pix_dataset.sh`` uses, checks it and extracts it so that the
folder appears whole or not at all (temp dir + rename). Torch-free on purpose.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from p2p.runtime import files
from p2p.runtime.errors import DataError, choices

NAMES = ("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day")
BASE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets"
# sha256 of each official archive, where one has been recorded. The server publishes no
# checksums; an archive whose digest is listed here must match it, others are still checked
# structurally (valid gzip tar, no unsafe members, NAME/train/ present).
SHA256: dict[str, str] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("P2P_DATA") or "~/.cache/p2p/datasets").expanduser()


def base_url() -> str:
    return os.environ.get("P2P_DATASET_URL") or BASE_URL


def resolve(data: str) -> Path:
    """A folder path wins; else a classic dataset name (downloaded when needed)."""
    path = Path(data).expanduser()
    if path.exists():
        return path
    if data in NAMES:
        return ensure(data)
    if os.sep in data or "/" in data or path.suffix:
        raise DataError(f"{path}: no such data folder")
    raise DataError(f"{data}: neither a data folder nor a known dataset name; "
                    f"allowed names: {choices(NAMES)}")


def ensure(name: str, root: Path | None = None, url: str | None = None,
           sha256: str | None = None) -> Path:
    """Path to the extracted dataset ``root/name``, downloading it if it is not there."""
    if name not in NAMES:
        raise DataError(f"{name}: unknown dataset name; allowed: {choices(NAMES)}")
    root = cache_dir() if root is None else Path(root)
    target = root / name
    if target.is_dir() and any(target.iterdir()):
        return target
    root.mkdir(parents=True, exist_ok=True)
    url = url or f"{base_url().rstrip('/')}/{name}.tar.gz"
    # The runtime's temp-file naming (pid inside): a download killed midway leaves a large
    # partial archive, which the next download into ``root`` removes.
    part = files.stage(root / f"{name}.tar.gz")
    try:
        digest = download(url, part)
        expected = sha256 or SHA256.get(name)
        if expected and digest != expected:
            raise DataError(f"{url}: sha256 {digest} does not match the expected {expected}; "
                            "the download is corrupt or not the official archive")
        extract(part, name, root, source=url)
    finally:
        part.unlink(missing_ok=True)
    print(f"dataset {name}: {target} (archive sha256 {digest})")
    return target


def download(url: str, dest: Path, chunk: int = 1 << 20) -> str:
    """Stream ``url`` into ``dest`` with a progress bar; returns the sha256 of the bytes."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url}") as bar:
                while block := r.read(chunk):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        raise DataError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"{url}: download failed: {reason}") from None
    return h.hexdigest()


def _check_member(m: tarfile.TarInfo, name: str, archive: str) -> None:
    """Only plain files and folders under ``name/``; nothing absolute, no '..', no links."""
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] != name:
        raise DataError(f"{archive}: unsafe or unexpected member {m.name!r} (everything must "
                        f"lie under {name}/); refusing to extract")
    if not (m.isfile() or m.isdir()):
        raise DataError(f"{archive}: member {m.name!r} is a link or device; refusing to extract")


def extract(archive: Path, name: str, root: Path, source: str | None = None) -> Path:
    """Check every member, extract into a temp dir in ``root``, then rename into place."""
    where = source or str(archive)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".extract", dir=root))
    try:
        with open(archive, "rb") as raw, tqdm(total=archive.stat().st_size, unit="B",
                                              unit_scale=True, desc=f"extract {name}") as bar:
            try:
                with tarfile.open(fileobj=raw, mode="r:gz") as tar:
                    # One pass: each member is checked before it is written, and a bad one
                    # aborts the whole extraction (the temp dir is removed below).
                    for m in tar:
                        _check_member(m, name, where)
                        tar.extract(m, tmp, filter="data")
                        bar.update(raw.tell() - bar.n)
            except (tarfile.TarError, EOFError, OSError) as e:
                raise DataError(f"{where}: not a valid .tar.gz archive ({e})") from None
        if not (tmp / name / "train").is_dir():
            raise DataError(f"{where}: archive lacks the expected folder {name}/train/")
        target = root / name
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp / name, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

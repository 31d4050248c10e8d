"""The classic pix2pix datasets by name: a local cache, download, checks, atomic extraction.

``--data facades`` looks in ``$P2P_DATA`` (default ``~/.cache/p2p/datasets``) for
``facades/``; when it is absent it downloads the archive pix2pix's own
``datasets/download_pix2pix_dataset.sh`` uses (resumable, ``runtime/download.py``), checks
its SHA-256 and extracts it so that the folder appears whole or not at all (temp dir +
rename). Torch-free on purpose.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from p2p.runtime import download
from p2p.runtime.errors import DataError, DownloadError, choices

NAMES = ("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day")
BASE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets"
# sha256 of each official archive, pinned only where known for certain. The server publishes
# no checksums; unpinned archives are checked against the digest recorded on their first
# download ($P2P_DATA/sha256.json) and always structurally (valid gzip tar, no unsafe
# members, NAME/train/ present).
SHA256: dict[str, str] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("P2P_DATA") or "~/.cache/p2p/datasets").expanduser()


def base_url() -> str:
    return os.environ.get("P2P_DATASET_URL") or BASE_URL


def locate(data: str) -> Path | None:
    """The one rule for where ``--data`` lives, without downloading: a folder path wins,
    else a classic dataset name already in ``cache_dir()``; None when neither is here."""
    path = Path(data).expanduser()
    if path.exists():
        return path
    if data in NAMES and (cache_dir() / data).is_dir():
        return cache_dir() / data
    return None


def resolve(data: str) -> Path:
    """A folder path wins; else a classic dataset name (downloaded when needed)."""
    path = locate(data)
    if path is not None and not path.is_dir() and path.exists():
        raise DataError(f"{path}: not a folder (--data takes a folder of images, or a "
                        "dataset name)")
    if path is not None:
        return path
    path = Path(data).expanduser()
    if data in NAMES:
        return ensure(data)
    if os.sep in data or "/" in data or path.suffix:
        raise DataError(f"{path}: no such data folder")
    raise DataError(f"{data}: neither a data folder nor a known dataset name; "
                    f"allowed names: {choices(NAMES)}")


def ensure(name: str, root: Path | None = None, url: str | None = None,
           sha256: str | None = None) -> Path:
    """Path to the extracted dataset ``root/name``, downloading it if it is not there.

    The archive's SHA-256 must match ``sha256`` (a caller's pin), else ``SHA256[name]``, else
    the digest recorded in ``root/sha256.json`` when this name was first downloaded; the
    first successful download records it. Raises ``DataError`` (one line) when the archive
    cannot be fetched (saying where p2p looked and how to use a copy), is not the expected
    file, or is not a safe pix2pix archive.
    """
    if name not in NAMES:
        raise DataError(f"{name}: unknown dataset name; allowed: {choices(NAMES)}")
    root = cache_dir() if root is None else Path(root)
    target = root / name
    if target.is_dir() and any(target.iterdir()):
        return target
    url = url or f"{base_url().rstrip('/')}/{name}.tar.gz"
    book = download.HashBook(root / "sha256.json")
    archive = root / f"{name}.tar.gz"
    try:
        want = download.expected(name, SHA256.get(name), sha256, book)
        digest = download.fetch(url, archive, want)
    except download.HashMismatch as e:
        raise DataError(str(e)) from None
    except DownloadError as e:
        raise DataError(f"{name}: not in {root} ($P2P_DATA) and not downloadable ({e}); put a copy of the "
                        f"dataset at {target} (with train/ and val/), point P2P_DATA at the "
                        f"folder that holds {name}/, or pass --data /path/to/{name}") from None
    try:
        extract(archive, name, root, source=url)
    finally:
        archive.unlink(missing_ok=True)
    book.record(name, digest, url)
    print(f"dataset {name}: {target} (archive sha256 {digest})")
    return target


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

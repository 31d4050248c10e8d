"""Temp files that a killed process left behind, recognised by the pid in their name.

Every atomic write in p2p goes to a hidden temp file beside its target and is renamed over
it. ``kill -9`` between the two leaves the temp file; these helpers let the next writer of
the same target remove it, while a temp file of a process that is still running is kept.
Torch-free, so trainer/, export/ and runtime/ can all use it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import P2PError

_UMASK = os.umask(0o22)
os.umask(_UMASK)  # read once: the process umask, applied to files we create via mkstemp


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temps(folder: Path, pattern: str) -> list[Path]:
    """Delete the entries of ``folder`` whose whole name matches ``pattern`` (a regex with a
    group named ``pid``) when that process is gone; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = re.fullmatch(pattern, e.name)
        if m and not pid_alive(int(m.group("pid"))):
            Path(e.path).unlink(missing_ok=True)
            removed.append(Path(e.path))
    return removed


def atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see old or new, never torn.
    A file system that refuses (read-only, full, a file where a folder should be) is one
    ``P2PError`` line naming ``path``, and the old file, if any, is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The pid in the name: a writer killed mid-write leaves this temp file, and the next
        # write of ``path`` removes it (full-size checkpoints are hundreds of MB each).
        remove_stale_temps(path.parent,
                                 re.escape(f".{path.name}.") + r"(?P<pid>\d+)\..+\.tmp")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
    except FileExistsError:  # mkdir(exist_ok=True) on a path that is a file
        raise P2PError(f"{path}: cannot write: {path.parent} is a file, not a folder") from None
    except OSError as e:
        raise P2PError(f"{path}: cannot write: {e.strerror or e}") from None
    os.close(fd)
    try:
        # mkstemp makes 0600 files; a rename must not make outputs private to their writer.
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise P2PError(f"{path}: cannot write: {e.strerror or e}") from None
        raise
    return path

"""The one way p2p writes a file: a hidden temp file beside the target, renamed over it.

Readers (and a rerun after ``kill -9``) see the old file or the whole new one, never a torn
one. Temp files are named ``.<target name>.<pid>.<random>.tmp[<ext>]``; a writer killed
between write and rename leaves one, and the next writer of that folder removes it, while a
temp file of a process that is still running is kept. Every file is created with the mode
``open()`` would give it (0666 minus the umask), never mkstemp's private 0600: models and
images are read by other users and containers. Torch-free, so trainer/, export/ and
runtime/ all use it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .errors import DataError, P2PError

TMP_SUFFIX = ".tmp"
# Any temp file of ``stage``: the random part of mkstemp has no dot.
_ANY_TEMP = r"\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]+" + re.escape(TMP_SUFFIX) + r"(\.[A-Za-z0-9]+)?"
_UMASK = os.umask(0o22)
os.umask(_UMASK)  # read once: the process umask, applied to files we create via mkstemp


def file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask."""
    return 0o666 & ~_UMASK


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists. A number no kernel can hold (a temp-looking file with
    a 30-digit "pid") is not alive: ``os.kill`` raises OverflowError for it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):
        return False
    return True


_STAGED: set[str] = set()  # the temp files this process staged (absolute paths)
# A live process counts as another than a temp's writer only when it started this much
# after the temp was last written: margin for the clock tick of /proc's start time and for
# file systems with coarse timestamps.
STARTED_SLACK_S = 0.5


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (to within a clock tick and
    the two reads' distance), from /proc; None where /proc cannot say or gives nonsense
    (a container whose /proc/uptime is its own, not the kernel's)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name may hold spaces
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        now = time.time()
        started = now - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22
    except (OSError, ValueError, IndexError):
        return None
    return started if 0 < started <= now + 1 else None


def is_stale(path: Path, pid: int) -> bool:
    """Whether the temp file ``path``, named with the writer's ``pid``, is left over from a
    writer that is gone: no process of that pid, or one that started after the file was
    last written. Pids are reused, and in a container every run can have the same one
    (pid 1): a killed run's temp then carries the pid of another process, or of the next
    run itself, which must still remove it. This process's own staged files never are."""
    if str(Path(path).absolute()) in _STAGED:
        return False
    if pid != os.getpid() and not pid_alive(pid):
        return True
    started = _started_at(pid)
    try:
        written = os.stat(path, follow_symlinks=False).st_mtime
    except OSError:
        return False
    return started is not None and started > written + STARTED_SLACK_S


def remove_stale_temps(folder: Path, pattern: str = _ANY_TEMP) -> list[Path]:
    """Delete the entries of ``folder`` whose whole name matches ``pattern`` (a regex with a
    group named ``pid``; default: any temp file of ``stage``) when their writer is gone
    (``is_stale``); returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = re.fullmatch(pattern, e.name)
        if m and is_stale(Path(e.path), int(m.group("pid"))):
            try:
                Path(e.path).unlink(missing_ok=True)
            except OSError:  # a folder this run only reads: its writer's business
                continue
            removed.append(Path(e.path))
    return removed


def stage(path: Path, keep_suffix: bool = False, clean: bool = True) -> Path:
    """An empty temp file beside ``path`` (same file system, so ``publish`` is an atomic
    rename), with the umask's mode. ``keep_suffix`` ends its name with ``path``'s suffix too
    (writers such as onnx.save pick the format from it). ``clean`` first removes the temp
    files a killed writer of ``path`` left. Raises P2PError naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if clean:
            remove_stale_temps(path.parent, re.escape(f".{path.name}.") + r"(?P<pid>\d+)\."
                               r"[A-Za-z0-9_]+" + re.escape(TMP_SUFFIX) + r"(\.[A-Za-z0-9]+)?")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=TMP_SUFFIX + (path.suffix if keep_suffix else ""),
                                   dir=path.parent)
    except FileExistsError:  # mkdir(exist_ok=True) on a path that is a file
        raise P2PError(f"{path}: cannot write: {path.parent} is a file, not a folder") from None
    except OSError as e:
        raise P2PError(f"{path}: cannot write: {e.strerror or e}") from None
    _STAGED.add(os.path.abspath(tmp))  # kept from this process's own cleaning (is_stale)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600 files
    finally:
        os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path, fsync: bool = True) -> Path:
    """Rename the finished ``tmp`` over ``path``. ``fsync`` first makes the bytes durable
    (a power cut then loses nothing); a killed process loses nothing either way."""
    if fsync:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    _STAGED.discard(os.path.abspath(tmp))
    return Path(path)


def atomic_write(path: Path, write, fsync: bool = True, clean: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see old or new, never torn.
    A file system that refuses (read-only, full, a file where a folder should be) is one
    ``P2PError`` line naming ``path``, and the old file, if any, is untouched. ``clean=False``
    skips the scan for stale temps (callers that write thousands of files clean once)."""
    path = Path(path)
    tmp = stage(path, clean=clean)
    try:
        write(tmp)
        publish(tmp, path, fsync)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise P2PError(f"{path}: cannot write: {os_reason(e, path)}") from None
        raise
    return path


def os_reason(e: OSError, path: Path) -> str:
    """An OSError's reason; a full disk or quota also names the file system and its free
    space, so the user knows which disk to clear."""
    why = e.strerror or str(e)
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return why
    mount = Path(os.path.abspath(path)).parent
    while not mount.exists() or not os.path.ismount(mount):
        mount = mount.parent
    try:
        usage = shutil.disk_usage(mount)
        free = f": {usage.free / 2**20:.1f} MiB free of {usage.total / 2**30:.1f} GiB"
    except OSError:
        free = ""
    return f"{why} (the file system mounted at {mount}{free}); the previous file is kept"


def check_creatable(folder: Path) -> None:
    """``check_writable``'s refusals that need nothing created (a file in the way, a
    read-only parent), for checks made before the model loads: the folder, or the nearest
    of its parents that exists, must be a folder this process may write into."""
    folder = Path(folder)
    here = folder
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise DataError(f"{folder}: cannot write into the output folder: {here} is a file, "
                        "not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        raise DataError(f"{folder}: cannot write into the output folder: Permission denied "
                        f"({here})")


def check_writable(folder: Path) -> None:
    """A DataError before any work when ``folder`` cannot take files (read-only, full, a
    file in the way), instead of one failure per output after all the work is done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".probe.{os.getpid()}.", suffix=TMP_SUFFIX,
                                     dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"{folder}: cannot write into the output folder: {e.strerror or e}"
                        ) from None
